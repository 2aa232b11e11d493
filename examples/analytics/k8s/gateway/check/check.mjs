// Checks the Gateway API manifests beside this folder, offline:
// 1. every object against its CRD schema (Gateway API and Envoy Gateway, from
//    the @kubernetes-models packages, which are generated from the CRDs);
// 2. that the settings SSE and the drain need are there, with the values the
//    README's "The Gateway API" section explains (a schema accepts a manifest
//    that simply leaves them out);
// 3. that the check can fail: a broken copy of each object is rejected.
// Run with: npm ci --prefix examples/analytics/k8s/gateway/check && node examples/analytics/k8s/gateway/check/check.mjs
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { Gateway } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/Gateway";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import { ClientTrafficPolicy } from "@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy";

const here = dirname(fileURLToPath(import.meta.url));
const dir = join(here, "..");
const models = {
  "gateway.networking.k8s.io/v1/Gateway": Gateway,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
  "gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy": ClientTrafficPolicy,
};

const failures = [];
const check = (ok, what) => {
  if (!ok) failures.push(what);
};
const load = (path) =>
  parseAllDocuments(readFileSync(path, "utf8")).map((doc) => {
    if (doc.errors.length) throw new Error(`${path}: ${doc.errors[0].message}`);
    return doc.toJS();
  });

// Gateway API durations (GEP-2257): 1h, 60s, 100ms, 1h30m; in seconds.
const seconds = (d) => {
  const units = { h: 3600, m: 60, s: 1, ms: 0.001 };
  const parts = [...String(d).matchAll(/(\d+)(ms|h|m|s)/g)];
  if (!parts.length || parts.map((p) => p[0]).join("") !== d) throw new Error(`not a duration: ${d}`);
  return parts.reduce((sum, [, n, unit]) => sum + Number(n) * units[unit], 0);
};

// 1. The schemas.
const objects = [];
for (const file of readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort()) {
  for (const obj of load(join(dir, file))) {
    const key = `${obj.apiVersion}/${obj.kind}`;
    const Model = models[key];
    check(Model, `${file}: no schema known for ${key}`);
    if (!Model) continue;
    try {
      new Model(obj).validate();
    } catch (err) {
      check(false, `${file}: ${key} ${obj.metadata?.name}: ${err.message}`);
    }
    objects.push({ file, key, obj, Model });
  }
}
const one = (key) => {
  const found = objects.filter((o) => o.key === key);
  check(found.length === 1, `exactly one ${key} (found ${found.length})`);
  return found[0]?.obj;
};
const gateway = one("gateway.networking.k8s.io/v1/Gateway");
const route = one("gateway.networking.k8s.io/v1/HTTPRoute");
const policy = one("gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy");
const [service] = load(join(dir, "..", "service.yaml"));

// 2. The settings, and that the objects refer to each other.
const https = gateway.spec.listeners.find((l) => l.protocol === "HTTPS");
check(https?.tls?.mode === "Terminate", "Gateway: an HTTPS listener that terminates TLS (HTTP/2 to browsers)");
for (const ref of route.spec.parentRefs) {
  check(ref.name === gateway.metadata.name, `HTTPRoute parentRef ${ref.name} is the Gateway`);
  check(!ref.sectionName || ref.sectionName === https?.name, `HTTPRoute sectionName ${ref.sectionName} is the HTTPS listener`);
}
const ruleFor = (method) => route.spec.rules.find((r) => r.matches?.some((m) => m.method === method));
const get = ruleFor("GET");
check(get?.matches.some((m) => m.path?.type === "PathPrefix" && m.path.value === "/"), "HTTPRoute: a GET rule for every path (the streams)");
check(get?.timeouts?.request === "0s", "HTTPRoute GET rule: timeouts.request \"0s\" (Envoy's 15 s route timeout would cut the streams)");
check(get?.retry?.codes?.includes(503), "HTTPRoute GET rule: retry on 503 (a draining pod's rejection)");
check((get?.retry?.attempts ?? 0) >= 1, "HTTPRoute GET rule: at least one retry attempt");
const post = ruleFor("POST");
check(post && !post.retry, "HTTPRoute POST rule: never retried by the gateway");
check(post && seconds(post.timeouts?.request ?? "0s") > 0, "HTTPRoute POST rule: a bounded request timeout");
for (const rule of route.spec.rules) {
  for (const ref of rule.backendRefs ?? []) {
    check(ref.name === service.metadata.name, `HTTPRoute backendRef ${ref.name} is the Service ${service.metadata.name}`);
    check(service.spec.ports.some((p) => p.port === ref.port), `HTTPRoute backendRef port ${ref.port} is a Service port`);
  }
}
const keepAlive = 15; // seconds between the example's keep-alive comments
const idle = seconds(policy.spec.timeout?.http?.streamIdleTimeout ?? "5m");
check(idle >= 2 * keepAlive, `ClientTrafficPolicy: streamIdleTimeout ${idle}s at least twice the ${keepAlive}s keep-alive`);
check(
  policy.spec.targetRefs.some((t) => t.kind === "Gateway" && t.name === gateway.metadata.name),
  "ClientTrafficPolicy targets the Gateway",
);

// 3. The check can fail: each object, broken, is rejected by its schema.
const broken = {
  "gateway.networking.k8s.io/v1/Gateway": (o) => (o.spec.listeners[0].protocol = 42),
  "gateway.networking.k8s.io/v1/HTTPRoute": (o) => (o.spec.rules[0].timeouts.request = "forever"),
  "gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy": (o) => (o.spec.timeout.http.streamIdleTimeout = "1 minute"),
};
for (const { key, obj, Model } of objects) {
  const copy = structuredClone(obj);
  broken[key](copy);
  let rejected = false;
  try {
    new Model(copy).validate();
  } catch {
    rejected = true;
  }
  check(rejected, `${key}: a broken copy must fail its schema`);
}

if (failures.length) {
  console.error(`gateway manifests: ${failures.length} problem(s):\n- ${failures.join("\n- ")}`);
  process.exit(1);
}
console.log(`gateway manifests: ${objects.length} objects valid against their CRD schemas, SSE settings present`);
