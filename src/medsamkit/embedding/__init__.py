"""medsamkit.embedding"""
