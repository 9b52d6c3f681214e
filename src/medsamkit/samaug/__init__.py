"""medsamkit.samaug"""
