-- Health of a modelloop TrainingRun, read from the status the operator writes
-- (operator/modelloop/training/plan.py, observe.py and report.py).
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
  hs.message = "Waiting for the operator to start the TrainingRun."
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation .. " of the TrainingRun."
  return hs
end

-- Reasons a run cannot get past until someone changes its spec, its image or what the API server allows;
-- the phase stays what it was (Pending, or Succeeded when registering the model is refused).
local stuck = {
  InvalidSpec = true,
  ApiRequestRefused = true,
  ErrImagePull = true,
  ImagePullBackOff = true,
  InvalidImageName = true,
  ErrImageNeverPull = true,
  CreateContainerConfigError = true,
}

if status.phase == "Failed" or stuck[status.reason] then
  hs.status = "Degraded"
  hs.message = message_or("The TrainingRun failed.")
elseif status.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message_or("The TrainingRun succeeded.")
  if status.modelVersion ~= nil then
    hs.message = hs.message .. " It registered ModelVersion " .. status.modelVersion .. "."
  end
elseif status.reason == "Queued" then
  -- The Job is suspended until its queue (Kueue) admits it, as Argo CD shows a suspended Job.
  hs.status = "Suspended"
  hs.message = message_or("The training Job waits to be admitted by its queue.")
elseif status.phase == "Pending" or status.phase == "Running" then
  hs.status = "Progressing"
  hs.message = message_or("The TrainingRun is " .. status.phase .. ".")
else
  hs.status = "Unknown"
  hs.message = "The TrainingRun has a phase this health check does not know: " .. status.phase .. "."
end
return hs
