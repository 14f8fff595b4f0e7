// scripts/crd-check/check.mjs FILE…: every monitoring.coreos.com/v1 object in the files must
// validate against the prometheus-operator CRD schemas (npm @kubernetes-models/prometheus-operator).
import fs from "fs";
import * as yaml from "js-yaml";
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!doc || doc.apiVersion !== "monitoring.coreos.com/v1") continue;
    const Kind = v1[doc.kind];
    if (!Kind) { console.error(`${file}: no schema for ${doc.kind}`); failed++; continue; }
    try { new Kind(doc).validate(); console.log(`${file}: ${doc.kind} ${doc.metadata.name} valid`); }
    catch (e) { console.error(`${file}: ${doc.kind}: ${e.message}`); failed++; }
  }
}
process.exit(failed ? 1 : 0);
