"""Closing the loop: the served log, the events, their join into impressions and the canary's judgement."""
