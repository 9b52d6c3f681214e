"""medsamkit.reports"""
