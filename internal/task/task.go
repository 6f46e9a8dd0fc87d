// Package task is cvat-sync's domain vocabulary: the CVAT task whose
// annotations are exported (State), what happened to it (Event, with its
// Resource, Action and Source), why an export was made (Trigger), which
// changes export (Policy), and the one ordering key of a task's work.
//
// The packages that move a task along use these types; the wire formats
// (the inbox item, the outbox notice, the bucket record) map to them, and the
// CVAT client's and the webhook envelope's own shapes are mapped to them at
// the edge.
package task

import (
	"fmt"
	"strconv"
	"time"
)

// State is a task as CVAT reports it now: the desired state of its export.
// UpdatedDate names the state: an export of the task is "current" when it
// holds the annotations as of this date.
type State struct {
	ID             int64
	Name           string
	ProjectID      int64 // 0: the task is in no project
	OrganizationID int64 // 0: a personal workspace
	Status         string
	UpdatedDate    time.Time
}

// StatusCompleted is CVAT's status of a completed task and state of a
// completed job.
const StatusCompleted = "completed"

// Resource is the kind of CVAT object an event is about.
type Resource string

// The resources whose events can change a task's export.
const (
	ResourceTask    Resource = "task"
	ResourceJob     Resource = "job"
	ResourceProject Resource = "project"
)

// Action is what happened to the resource.
type Action string

// The actions of CVAT's events.
const (
	ActionCreate Action = "create"
	ActionUpdate Action = "update"
	ActionDelete Action = "delete"
)

// Source says who noticed a change: a webhook, a convergence pass, or a
// backfill.
type Source string

// The sources of events.
const (
	SourceWebhook   Source = "webhook"
	SourceReconcile Source = "reconcile"
	SourceBackfill  Source = "backfill"
)

// Policy says which task states are exported.
type Policy string

// The policies.
const (
	// PolicyUpdate exports every state of a task: any change to the task,
	// its jobs or its annotations.
	PolicyUpdate Policy = "update"
	// PolicyCompleted exports a task's state when the task is completed, or
	// when one of its jobs reached completed since the last export.
	PolicyCompleted Policy = "completed"
)

// ParsePolicy reads a policy name.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case PolicyUpdate, PolicyCompleted:
		return p, nil
	}
	return "", fmt.Errorf("trigger policy %q is not %q or %q", s, PolicyUpdate, PolicyCompleted)
}

// Event is a hint that a task (or a project's tasks) may have changed: the
// worker reads CVAT's current state and makes the export match it, so an
// event never carries the state to export, only what to look at and why.
type Event struct {
	Name      string // CVAT's event, e.g. "update:job"; "reconcile" or "backfill" for the others
	Resource  Resource
	Action    Action
	TaskID    int64 // 0 for a project event that names no task
	JobID     int64
	ProjectID int64
	// OrganizationID, Status, UpdatedDate and TaskName are what the event
	// said of the resource: informational (logs, a deletion's last known
	// name), never the state exported.
	OrganizationID int64
	Status         string
	UpdatedDate    time.Time
	TaskName       string
	WebhookID      int64
	Sender         string
	ReceivedAt     time.Time
	Source         Source
	RequestID      string
}

// Key is the ordering key of the event's work: one task's work is done in
// order by one worker at a time.
func (e Event) Key() string {
	switch {
	case e.TaskID != 0:
		return OrderingKey(e.TaskID)
	case e.ProjectID != 0:
		return ProjectKey(e.ProjectID)
	}
	return ""
}

// IsDeletion reports whether the event says its task or project is gone.
func (e Event) IsDeletion() bool { return e.Action == ActionDelete }

// Trigger says what caused an export; consumers read it in the notice.
type Trigger struct {
	Event     string // the CVAT event, or "reconcile" / "backfill"
	WebhookID int64
	JobID     int64
	Sender    string
	Coalesced int // events folded into this export
}

// TriggerOf is the trigger an event gives an export.
func TriggerOf(e Event) Trigger {
	return Trigger{Event: e.Name, WebhookID: e.WebhookID, JobID: e.JobID, Sender: e.Sender, Coalesced: 1}
}

// OrderingKey is the ordering key of a task's inbox items and outbox notices.
func OrderingKey(taskID int64) string { return "task-" + strconv.FormatInt(taskID, 10) }

// ProjectKey is the ordering key of a project-level item that names no task.
func ProjectKey(projectID int64) string { return "project-" + strconv.FormatInt(projectID, 10) }
