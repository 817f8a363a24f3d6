-- Health of a modelloop InferenceService, read from the status the operator writes
-- (operator/modelloop/serving/rollout.py and controllers/inferenceservice.py).
-- Argo CD runs this without Lua's open libraries: no string functions, only comparisons and "..".
local hs = {}
local status = obj.status

local function ready_condition()
  for _, condition in ipairs(status.conditions or {}) do
    if condition.type == "Ready" then
      return condition
    end
  end
  return {}
end

local function message_or(default)
  local message = status.message or ready_condition().message
  if message == nil or message == "" then
    return default
  end
  return message
end

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to deploy the InferenceService."
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation .. " of the InferenceService."
  return hs
end

-- Refusals keep the phase the service had (it goes on serving what it served) and say what to change.
local refused = { InvalidSpec = true, ApiRequestRefused = true, BackendChanged = true }

if status.phase == "Degraded" or refused[status.reason] then
  hs.status = "Degraded"
  hs.message = message_or("The InferenceService is degraded.")
elseif status.phase == "RolledBack" then
  if status.reason == "Superseded" then
    -- The spec itself went back to the stable version: what it asks for is served.
    hs.status = "Healthy"
  else
    -- Failed analysis, or an abort: the version the spec asks for is not served until it is resumed.
    hs.status = "Degraded"
  end
  hs.message = message_or("The rollout was rolled back.")
elseif status.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = message_or("The rollout is paused.")
elseif status.phase == "Pending" or status.phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = message_or("The InferenceService is " .. status.phase .. ".")
elseif status.phase == "Stable" or status.phase == "Promoted" then
  local ready = ready_condition()
  if ready.status == "False" then
    -- The phase stays while the backend recovers (a pod restarts, a node drains); it turns Degraded if
    -- the backend reports a failure.
    hs.status = "Progressing"
    hs.message = ready.message or "The backend does not report the service ready."
  else
    hs.status = "Healthy"
    hs.message = message_or("Serving version " .. (status.stableVersion or "?") .. ".")
  end
else
  hs.status = "Unknown"
  hs.message = "The InferenceService has a phase this health check does not know: " .. status.phase .. "."
end
return hs
