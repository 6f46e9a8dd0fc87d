package payloads

import (
	"encoding/json"
	"testing"
)

func TestAllAreCVATPayloads(t *testing.T) {
	all := All(t)
	if len(all) < 22 {
		t.Fatalf("found %d payloads, want at least the 22 of the reference pack", len(all))
	}
	for name, b := range all {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if _, ok := m["event"]; !ok {
			t.Errorf("%s has no event field", name)
		}
	}
	if got, want := string(Read(t, "update_job.json")), string(all["update_job.json"]); got != want {
		t.Error("Read and All disagree on update_job.json")
	}
	if _, ok := all["v2.73.0/update_task.json"]; !ok {
		t.Error("payloads in sub-folders are not keyed by their relative path")
	}
}
