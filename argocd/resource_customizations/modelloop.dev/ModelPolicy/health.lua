-- Health of a modelloop ModelPolicy, read from the status the operator's registry writes
-- (operator/modelloop/registry/plan.py): its message is in the Ready condition.
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
  hs.message = "Waiting for the operator to apply the ModelPolicy."
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation .. " of the ModelPolicy."
  return hs
end

if status.phase == "Invalid" then
  hs.status = "Degraded"
  hs.message = message_or("The ModelPolicy is invalid.")
elseif status.phase == "Active" then
  hs.status = "Healthy"
  hs.message = message_or("The ModelPolicy applies.")
  if status.champion ~= nil then
    hs.message = hs.message .. " Champion: " .. status.champion .. "."
  end
else
  hs.status = "Unknown"
  hs.message = "The ModelPolicy has a phase this health check does not know: " .. status.phase .. "."
end
return hs
