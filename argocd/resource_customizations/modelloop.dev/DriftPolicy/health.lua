-- Health of a modelloop DriftPolicy, read from the status the operator writes
-- (operator/modelloop/controllers/driftpolicy.py and review.py).
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
  hs.message = "Waiting for the operator to accept the DriftPolicy."
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation .. " of the DriftPolicy."
  return hs
end

-- An invalid spec keeps the phase; the Ready condition says what to change.
local ready = ready_condition()
if status.reason == "InvalidSpec" or (ready.status == "False" and ready.reason == "InvalidSpec") then
  hs.status = "Degraded"
  hs.message = message_or("The DriftPolicy's spec is invalid.")
elseif status.phase == "Degraded" then
  -- Prometheus refuses a query of the policy: its spec is wrong, and the model goes unwatched.
  hs.status = "Degraded"
  hs.message = message_or("The DriftPolicy's queries are refused.")
elseif status.phase == "Inconclusive" then
  -- The metrics cannot be evaluated (no data, Prometheus unreachable): the model goes unwatched.
  hs.status = "Degraded"
  hs.message = message_or("The drift metrics cannot be evaluated.")
elseif status.phase == "Breached" or status.phase == "Retraining" then
  -- Drift is being confirmed over the window, or the retraining it started runs.
  hs.status = "Progressing"
  hs.message = message_or("The DriftPolicy is " .. status.phase .. ".")
  if status.phase == "Retraining" and status.lastTrainingRun ~= nil then
    hs.message = hs.message .. " TrainingRun: " .. status.lastTrainingRun .. "."
  end
elseif status.phase == "Watching" or status.phase == "CoolingDown" then
  hs.status = "Healthy"
  hs.message = message_or("The DriftPolicy is " .. status.phase .. ".")
else
  hs.status = "Unknown"
  hs.message = "The DriftPolicy has a phase this health check does not know: " .. status.phase .. "."
end
return hs
