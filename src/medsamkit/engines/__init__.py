"""medsamkit.engines"""
