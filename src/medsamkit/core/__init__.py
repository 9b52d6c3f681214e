"""medsamkit.core"""
