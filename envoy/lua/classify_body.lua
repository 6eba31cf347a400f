-- msm: tell the two REST bodies of a V2 infer call apart, before grpc_json_transcoder runs.
--
-- A standard V2 REST body carries its tensors as `inputs[].data`; the transcoder would drop that
-- unknown field, so such a request is marked with the header below and its route is looked up
-- again: the route that matches the header sends it to the runtime's REST port untranscoded.
-- Every other body (the article's `inputs[].contents`, or neither) is left to the transcoder.
-- The decision reads only as much of the JSON as it needs: the keys of the first input object.

local BODY_HEADER = "x-msm-body"  -- xds_server.translate.data_path.REST_BODY_HEADER
local BODY_DATA = "data"          -- xds_server.translate.data_path.REST_BODY_DATA
local PREFIX_BYTES = 65536        -- scanned first; the whole body only if that does not decide

local find, sub, byte = string.find, string.sub, string.byte
local OPEN_OBJ, OPEN_ARR, CLOSE_OBJ, CLOSE_ARR, QUOTE = 123, 91, 125, 93, 34

-- "data", "contents" or nil: the first of these keys found in an object of the top-level
-- "inputs" array. A structural scan (strings are skipped whole, numbers are jumped over).
local function classify(s)
  local depth = 0
  local kinds = {}  -- byte of the opening bracket at each depth
  local keys = {}   -- last key seen in the object at each depth
  local pos = 1
  while true do
    local i = find(s, '[{}%[%]"]', pos)
    if i == nil then return nil end
    local c = byte(s, i)
    if c == QUOTE then
      local j = i + 1
      while true do
        j = find(s, '["\\]', j)
        if j == nil then return nil end
        if byte(s, j) == QUOTE then break end
        j = j + 2
      end
      if kinds[depth] == OPEN_OBJ and find(s, "^%s*:", j + 1) then
        local key = sub(s, i + 1, j - 1)
        keys[depth] = key
        if depth == 3 and (key == "data" or key == "contents") and keys[1] == "inputs"
            and kinds[1] == OPEN_OBJ and kinds[2] == OPEN_ARR then
          return key
        end
      end
      pos = j + 1
    elseif c == OPEN_OBJ or c == OPEN_ARR then
      depth = depth + 1
      kinds[depth] = c
      keys[depth] = nil
      pos = i + 1
    else  -- CLOSE_OBJ or CLOSE_ARR
      depth = depth - 1
      if depth <= 0 then return nil end  -- the top-level value ended
      pos = i + 1
    end
  end
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get(":method") ~= "POST" then return end
  local path = headers:get(":path") or ""
  local q = find(path, "?", 1, true)
  if q then path = sub(path, 1, q - 1) end
  if sub(path, -6) ~= "/infer" then return end
  local ct = headers:get("content-type")
  if ct ~= nil and sub(ct, 1, 16) == "application/grpc" then
    -- gRPC framing on a REST path: passed on, it would reach the runtime's gRPC port as garbage
    -- and come back as an empty 200 with no error. A gRPC request gets a gRPC answer (Envoy turns
    -- every local reply to one into trailers): INVALID_ARGUMENT, saying where gRPC goes.
    handle:respond({[":status"] = "200", ["content-type"] = "application/grpc", ["grpc-status"] = "3",
                    ["grpc-message"] = "content-type application/grpc on a REST path: send JSON here, or "
                      .. "gRPC (inference.GRPCInferenceService with mm-vmodel-id) to the gRPC port"}, "")
    return
  end
  local body = handle:body()
  if body == nil then return end
  local n = body:length()
  local kind = classify(body:getBytes(0, math.min(n, PREFIX_BYTES)))
  if kind == nil and n > PREFIX_BYTES then kind = classify(body:getBytes(0, n)) end
  headers = handle:headers()  -- the handle taken before body() is stale after it
  if kind == "data" then
    headers:replace(BODY_HEADER, BODY_DATA)
    handle:clearRouteCache()
  elseif headers:get(BODY_HEADER) ~= nil then
    headers:remove(BODY_HEADER)  -- only this filter decides which route a body takes
    handle:clearRouteCache()
  end
end
