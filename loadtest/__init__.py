"""Load tests with locust (run as their own process; never imported by the server or pytest)."""
