-- msm: a sticky split. On routes of a split keyed on a request header (a VirtualService's
-- serving.msm.io/sticky-header), the header's value is hashed into a bucket 0..9999 and the route
-- is looked up again: each destination's route matches its range of buckets, so one caller (one
-- user or session id) always lands on the same side, on every gateway replica alike. A request
-- without the header is split at random, as any other.
--
-- The filter is off by default; the routes of sticky splits turn it on and name the header in
-- their metadata (filter_metadata["msm.sticky"]["header"]).

local BUCKET_HEADER = "x-msm-bucket"  -- xds_server.translate.names.BUCKET_HEADER
local BUCKETS = 10000                 -- xds_server.translate.routes.BUCKETS
local TWO32 = 4294967296

local bit = require("bit")
local bxor, byte = bit.bxor, string.byte

-- 32-bit FNV-1a of s (xds_server.translate.routes.sticky_bucket computes the same in Python).
-- Lua numbers are doubles: the multiplication by the FNV prime 16777619 = 2^24 + 403 is done in
-- two exact parts so that no product passes 2^53.
local function fnv1a(s)
  local h = 2166136261
  for i = 1, #s do
    h = bxor(h, byte(s, i))  -- a signed 32-bit result
    if h < 0 then h = h + TWO32 end
    h = (h * 403 + (h % 256) * 16777216) % TWO32
  end
  return h
end

function envoy_on_request(handle)
  local name = handle:metadata():get("header")
  if name == nil then return end
  local headers = handle:headers()
  local value = headers:get(name)
  if value == nil then
    headers:remove(BUCKET_HEADER)  -- a caller's own bucket does not choose a side
    return
  end
  headers:replace(BUCKET_HEADER, string.format("%d", fnv1a(value) % BUCKETS))  -- the filter clears the route cache
end
