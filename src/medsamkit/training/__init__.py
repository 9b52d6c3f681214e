"""medsamkit.training"""
