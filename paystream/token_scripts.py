"""Lua scripts for a Redis key held under a random token (the replay lease, a Paddle
create's in-flight key): only the holder's own token extends or removes it, checked and
done in one step so that a key taken over by another holder after it expired is left
alone."""

from __future__ import annotations

# KEYS[1] the key, ARGV[1] the holder's token, ARGV[2] the new time to live in ms:
# 1 if extended, 0 if the key is not (or no longer) this holder's.
EXPIRE_IF_HELD = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] the key, ARGV[1] the holder's token: 1 if removed, 0 if not this holder's.
RELEASE_IF_HELD = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
