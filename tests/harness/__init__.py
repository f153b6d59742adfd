"""The test harness: everything test files (and bench/) import; conftest.py holds only fixtures."""
