"""Model lifecycle: loading, warm-up, lookup and routing, roll-out (canary, shadow, promote, rollback)
and the `serving.json` follower."""
