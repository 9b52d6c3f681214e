"""medsamkit.volumes"""
