"""medsamkit.evaluation"""
