"""The deferred set: tasks parked in Redis until they are due, then pumped back."""
