//! The Lua scripts: each read-check-write that must be atomic across replicas. Redis runs a
//! script as one command; each names every key it touches in KEYS, and reads the clock with
//! `TIME`, so that deadlines compare against one clock (Redis's), not each replica's.

use std::sync::LazyLock;

use redis::Script;

/// `queued` → `running`, never over a final status.
/// KEYS: run hash.
pub(crate) static SET_RUNNING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
  return 1
end
return 0",
    )
});

/// Renew a run's lease (and its place in its user's concurrent runs); answer whether a
/// cancel was requested (`1`), the hash is gone (`missing`: Redis lost it), or nothing (``).
/// KEYS: lease, run hash, user's runs (or the lease again for an anonymous run).
/// ARGV: replica, lease ms, run id, `1` if the run has a user.
pub(crate) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', lease)
if ARGV[4] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[3], 'XX', now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[3], 2 * lease)
end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'missing' end
return redis.call('HGET', KEYS[2], 'cancel') or ''",
    )
});

/// End a run whose lease expired: unless the lease is back or the run is final, write the
/// given `internal_error` record. Always take it out of `active`.
/// KEYS: run hash, lease, active set. ARGV: run id, record JSON, retention ms.
pub(crate) static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SREM', KEYS[3], ARGV[1])
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'queued' or s == 'running' then
  redis.call('HSET', KEYS[1], 'rec', ARGV[2], 'status', 'internal_error')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0",
    )
});

/// Take a concurrent-run place: drop the user's places whose lease lapsed, refuse when the
/// CPU window is used up (`{2, ms left in the window, used}`) or the places are taken
/// (`{0}`), else take one (`{1}`).
/// KEYS: user's runs, user's CPU. ARGV: cap (-1: none), run id, lease ms, CPU limit (-1: none).
pub(crate) static START_RUN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit = tonumber(ARGV[4])
if limit >= 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= limit then
    return {2, redis.call('PTTL', KEYS[2]), tostring(used)}
  end
end
local cap = tonumber(ARGV[1])
if cap < 0 then return {1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= cap then return {0} end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * lease)
return {1}",
    )
});

/// Give a place back and charge CPU-seconds (the window starts with the first charge).
/// KEYS: user's runs, user's CPU. ARGV: run id, CPU-seconds (0: none), window ms.
pub(crate) static END_RUN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[2], ARGV[2])
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
end
return 1",
    )
});

/// One request against a token bucket of `burst` refilled every `period` ms (GCRA: the key
/// holds the theoretical arrival time). Answers -1 when allowed, else the ms to wait.
/// KEYS: user's rate. ARGV: period ms, burst.
pub(crate) static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local period = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat - (burst - 1) * period
if now < allow_at then return math.ceil(allow_at - now) end
local new = tat + period
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 1000)
return -1",
    )
});
