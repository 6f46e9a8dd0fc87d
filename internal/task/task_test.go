package task

import (
	"strings"
	"testing"
)

// TestKeys: the ordering keys are a frozen contract (inbox wire v1 and the
// outbox's ordering): a task's work and notices share "task-<id>", a
// project event that names no task gets "project-<id>".
func TestKeys(t *testing.T) {
	for _, tt := range []struct {
		e    Event
		want string
	}{
		{Event{TaskID: 42, ProjectID: 7}, "task-42"},
		{Event{ProjectID: 7}, "project-7"},
		{Event{}, ""},
		{Event{TaskID: 9223372036854775807}, "task-9223372036854775807"},
	} {
		if got := tt.e.Key(); got != tt.want {
			t.Errorf("%+v.Key() = %q, want %q", tt.e, got, tt.want)
		}
	}
	if OrderingKey(42) != (Event{TaskID: 42}).Key() {
		t.Error("OrderingKey and Event.Key disagree")
	}
}

func TestParsePolicy(t *testing.T) {
	for _, s := range []string{"update", "completed"} {
		if p, err := ParsePolicy(s); err != nil || string(p) != s {
			t.Errorf("ParsePolicy(%q) = %q, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "Update", "complete"} {
		_, err := ParsePolicy(s)
		if err == nil || !strings.Contains(err.Error(), `"update" or "completed"`) {
			t.Errorf("ParsePolicy(%q) = %v, want an error naming the policies", s, err)
		}
	}
}

func TestTriggerOf(t *testing.T) {
	e := Event{Name: "update:job", WebhookID: 3, JobID: 5, Sender: "alice", TaskID: 1, Action: ActionUpdate}
	if got := TriggerOf(e); got != (Trigger{Event: "update:job", WebhookID: 3, JobID: 5, Sender: "alice", Coalesced: 1}) {
		t.Errorf("TriggerOf = %+v", got)
	}
	if e.IsDeletion() || !(Event{Action: ActionDelete}).IsDeletion() {
		t.Error("IsDeletion does not follow the action")
	}
}
