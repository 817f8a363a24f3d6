-- Health of a modelloop ModelVersion, read from the status the operator's registry writes
-- (operator/modelloop/registry/plan.py, validation.py and stages.py).
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
  hs.message = "Waiting for the operator to validate the ModelVersion."
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation .. " of the ModelVersion."
  return hs
end

local request = status.stageRequest
if status.phase == "Pending" then
  -- Pending until validated; these two reasons say what to fix before it can be.
  if status.reason == "InvalidSpec" or status.reason == "InvalidModelPolicy" then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = message_or("Waiting for validation.")
elseif status.phase == "Rejected" and status.stage ~= "Archived" then
  hs.status = "Degraded"
  hs.message = message_or("The ModelVersion was rejected by validation.")
elseif request ~= nil and request.result == "Refused" then
  -- What the modelloop.dev/requested-stage annotation asks for cannot be done: the annotation must change.
  hs.status = "Degraded"
  hs.message = "The requested stage " .. request.stage .. " was refused: " .. (request.message or "no reason given")
elseif status.phase == "Validated" or status.phase == "Rejected" then
  -- Validated, or Rejected and archived since: nothing left to do.
  hs.status = "Healthy"
  hs.message = (status.stage or "No stage") .. " (" .. status.phase .. "): " .. message_or("no message.")
else
  hs.status = "Unknown"
  hs.message = "The ModelVersion has a phase this health check does not know: " .. status.phase .. "."
end
return hs
