-- msm: send a gRPC call to the runtime under the model id it knows (the revision id).
--
-- Clients name the model they want ("sklearn-mnist"); the runtime holds it as a revision
-- ("sklearn-mnist__isvc-3c10c62d34"). For the V2 calls whose request message carries the model
-- name in field 1 (ModelInfer.model_name, ModelReady.name, ModelMetadata.name), this filter
-- replaces that field in every gRPC frame of the request body with the route's target, taken
-- from the route metadata under this filter's name, key "target", and rewrites the length
-- prefixes. Transcoded REST calls arrive here as gRPC too. ModelMesh does the same rewrite.

local TARGET_KEY = "target"  -- xds_server.translate.data_path.TARGET_KEY
local METHODS = {
  ["/inference.GRPCInferenceService/ModelInfer"] = true,
  ["/inference.GRPCInferenceService/ModelReady"] = true,
  ["/inference.GRPCInferenceService/ModelMetadata"] = true,
}

local byte, char, sub, concat = string.byte, string.char, string.sub, table.concat
local floor = math.floor

local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = char(n % 128 + 128)
    n = floor(n / 128)
  end
  out[#out + 1] = char(n)
  return concat(out)
end

-- value and the position after it, or nil past the end of [i, last]
local function read_varint(s, i, last)
  local value, scale = 0, 1
  while i <= last do
    local b = byte(s, i)
    value = value + (b % 128) * scale
    i = i + 1
    if b < 128 then return value, i end
    scale = scale * 128
  end
  return nil
end

-- the message in s[first..last] with every field 1 removed and `field1` put first;
-- nil if it does not parse as protobuf
local function rewrite_message(s, first, last, field1)
  local parts = { field1 }
  local keep, i = first, first
  while i <= last do
    local start = i
    local key
    key, i = read_varint(s, i, last)
    if key == nil then return nil end
    local wire = key % 8
    if wire == 0 then
      local _
      _, i = read_varint(s, i, last)
      if i == nil then return nil end
    elseif wire == 1 then
      i = i + 8
    elseif wire == 2 then
      local len
      len, i = read_varint(s, i, last)
      if len == nil then return nil end
      i = i + len
    elseif wire == 5 then
      i = i + 4
    else
      return nil  -- groups: not in this protocol
    end
    if i > last + 1 then return nil end
    if floor(key / 8) == 1 then
      parts[#parts + 1] = sub(s, keep, start - 1)
      keep = i
    end
  end
  parts[#parts + 1] = sub(s, keep, last)
  return concat(parts)
end

local function be32(n)
  return char(floor(n / 16777216) % 256, floor(n / 65536) % 256, floor(n / 256) % 256, n % 256)
end

-- the new body, nil to leave it alone, or false (and a reason) if it cannot be rewritten
local function rewrite_frames(s, target)
  local field1 = "\10" .. varint(#target) .. target
  local out = {}
  local i, n = 1, #s
  while i <= n do
    if i + 4 > n then return nil end
    local flag = byte(s, i)
    local b1, b2, b3, b4 = byte(s, i + 1, i + 4)
    local len = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    local first, last = i + 5, i + 4 + len
    if last > n then return nil end
    if flag ~= 0 then return false, "compressed request messages cannot be routed by model" end
    local msg = rewrite_message(s, first, last, field1)
    if msg == nil then return nil end
    out[#out + 1] = "\0" .. be32(#msg) .. msg
    i = last + 1
  end
  return concat(out)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local ct = headers:get("content-type")
  if ct == nil or sub(ct, 1, 16) ~= "application/grpc" or sub(ct, 17, 17) == "-" then return end
  if not METHODS[headers:get(":path")] then return end
  local target = handle:metadata():get(TARGET_KEY)
  if target == nil then return end
  local body = handle:body()
  if body == nil then return end
  local new, why = rewrite_frames(body:getBytes(0, body:length()), target)
  if new == false then
    handle:respond({ [":status"] = "200", ["content-type"] = "application/grpc",
                     ["grpc-status"] = "12", ["grpc-message"] = why }, "")
    return
  end
  if new == nil then return end
  body:setBytes(new)
  headers = handle:headers()  -- the handle taken before body() is stale after it
  if headers:get("content-length") ~= nil then
    headers:replace("content-length", tostring(#new))
  end
end
