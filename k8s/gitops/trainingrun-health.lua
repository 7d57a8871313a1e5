-- Argo CD health check for raykube.io/TrainingRun, derived from status.conditions
-- (the same rules as the operator's phase, plus rollout and generation awareness).
-- Installed by argocd-cm.yaml (key resource.customizations.health.raykube.io_TrainingRun);
-- tests/unit/test_manifests.py runs it (Lua 5.1, as Argo CD's gopher-lua) on sample
-- statuses.
local hs = { status = "Progressing", message = "Waiting for the raykube operator" }

local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then return c end
  end
  return nil
end

local function msg(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  return fallback
end

if obj.status == nil then return hs end

-- A spec change the operator has not acted on yet.
local gen = obj.metadata.generation
local seen = obj.status.observedGeneration
if gen ~= nil and seen ~= nil and seen < gen then
  hs.message = "Spec generation " .. gen .. " not yet observed by the operator"
  return hs
end

local validated = condition("Validated")
if validated ~= nil and validated.status == "False" then
  hs.status = "Degraded"
  hs.message = msg(validated, "Invalid TrainingRun")
  return hs
end

local failed = condition("Failed")
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  hs.message = msg(failed, "Training failed")
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local endpoint = ""
  if obj.status.serving ~= nil and obj.status.serving.endpoint ~= nil then
    endpoint = " at " .. obj.status.serving.endpoint
  end
  hs.message = "Serving" .. endpoint
  return hs
end

local succeeded = condition("Succeeded")
if succeeded ~= nil and succeeded.status == "True" then
  local promoted = condition("Promoted")
  local serve = obj.spec ~= nil and obj.spec.serve ~= nil and obj.spec.serve.enabled == true
  if promoted ~= nil and promoted.status == "True" then
    hs.message = msg(ready, "Serving is rolling out")
    return hs
  end
  if serve and promoted == nil then
    hs.message = "Training succeeded; deciding on promotion"
    return hs
  end
  -- Done. Not promoted (gate not met) is a result, not a fault of the resource.
  hs.status = "Healthy"
  hs.message = msg(promoted, msg(succeeded, "Training succeeded"))
  return hs
end

local running = condition("Running")
if running ~= nil and running.status ~= "True" and running.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = msg(running, "Suspended (spec.suspend)")
  return hs
end

local p = obj.status.progress
if p ~= nil and p.epoch ~= nil and p.epochs ~= nil then
  hs.message = "Training: epoch " .. p.epoch .. "/" .. p.epochs
  if p.valAccuracy ~= nil then
    hs.message = hs.message .. string.format(", valAccuracy %.3f", p.valAccuracy)
  end
elseif running ~= nil then
  hs.message = msg(running, obj.status.phase or "Pending")
elseif obj.status.phase ~= nil then
  hs.message = obj.status.phase
end
return hs
