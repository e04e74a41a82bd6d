"""The emergency plan: its hook into dispatch, plan rules and windows, breakers, triggers, deferred claims, the console and its operators."""
