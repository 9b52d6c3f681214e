"""medsamkit.io"""
