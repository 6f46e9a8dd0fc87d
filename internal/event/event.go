// Package event parses the JSON envelope of CVAT webhook deliveries.
//
// CVAT's envelope changed over its releases: key order (2.3, 2.4.2, 2.44),
// optional before_update (and changes from 2.73), relative URLs and a short
// sender for events raised in background workers, flat bodies for the
// request-completion events of 2.65+. Parse reads by key, treats everything
// but "event" as optional, and keeps the raw bytes.
package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors of Parse; the ingress answers 400 for both.
var (
	// ErrNotObject means the body is not a JSON object.
	ErrNotObject = errors.New("body is not a JSON object")
	// ErrNoEvent means the object has no non-empty string "event".
	ErrNoEvent = errors.New(`body has no "event" string`)
)

// Resource kinds named in CVAT event keys ("<action>:<resource>").
const (
	ResourceProject      = "project"
	ResourceTask         = "task"
	ResourceJob          = "job"
	ResourceIssue        = "issue"
	ResourceComment      = "comment"
	ResourceOrganization = "organization"
	ResourceInvitation   = "invitation"
	ResourceMembership   = "membership"
	ResourceUser         = "user"
	ResourceWebhook      = "webhook" // ping
	ResourceRequest      = "request" // completed:request[...] (2.73+)
	ResourceExport       = "export"  // create:export (2.65-2.72)
	ResourceBackup       = "backup"  // create:backup (2.65-2.72)
)

// Ping is the event CVAT sends for a webhook's "ping" button and API.
const Ping = "ping"

// known lists every event name a CVAT 2.3 to 2.7x release sends. Anything else
// is still accepted, but counted as "unknown" so a metric label never carries
// a value chosen by the sender.
var known = func() map[string]bool {
	m := map[string]bool{
		Ping:                                    true,
		"update:organization":                   true,
		"delete:organization":                   true,
		"create:organization":                   true, // server-wide webhooks, 2.76+
		"create:invitation":                     true,
		"delete:invitation":                     true,
		"create:user":                           true, // server-wide webhooks, 2.76+
		"update:user":                           true,
		"delete:user":                           true,
		"create:export":                         true, // 2.65-2.72
		"create:backup":                         true,
		"completed:request[export:dataset]":     true, // 2.73+
		"completed:request[export:annotations]": true,
		"completed:request[export:backup]":      true,
	}
	for _, r := range []string{ResourceProject, ResourceTask, ResourceJob, ResourceIssue, ResourceComment, ResourceMembership} {
		for _, a := range []string{"create", "update", "delete"} {
			m[a+":"+r] = true
		}
	}
	return m
}()

// Known reports whether name is an event some CVAT release sends.
func Known(name string) bool { return known[name] }

// KnownEvents returns the known event names, sorted.
func KnownEvents() []string {
	out := make([]string, 0, len(known))
	for k := range known {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// MetricLabel is name if it is a known event and "unknown" otherwise.
func MetricLabel(name string) string {
	if known[name] {
		return name
	}
	return "unknown"
}

// Envelope is what cvat-sync needs from one delivery. Zero values mean "not in
// this payload".
type Envelope struct {
	Event    string `json:"event"`
	Action   string `json:"action"`   // create, update, delete, ping, completed
	Resource string `json:"resource"` // project, task, job, ...; "webhook" for ping
	Known    bool   `json:"known"`

	WebhookID int64 `json:"webhook_id,omitempty"`
	// ObjectID is the id of the resource the event is about.
	ObjectID       int64 `json:"object_id,omitempty"`
	TaskID         int64 `json:"task_id,omitempty"`
	JobID          int64 `json:"job_id,omitempty"`
	ProjectID      int64 `json:"project_id,omitempty"`
	OrganizationID int64 `json:"organization_id,omitempty"`

	// Sender is the username of whoever caused the event (informational: its
	// shape depends on where CVAT raised the event).
	Sender string `json:"sender,omitempty"`
	// UpdatedDate is the resource's updated_date as CVAT sent it.
	UpdatedDate time.Time `json:"updated_date,omitzero"`
	// Status is a task's or project's status, or a job's state.
	Status string `json:"status,omitempty"`
	// Stage is a job's stage.
	Stage string `json:"stage,omitempty"`
	// Changed lists the keys of before_update (or changes), sorted.
	Changed []string `json:"changed,omitempty"`
	// PreviousStatus is before_update.status (task) or before_update.state (job).
	PreviousStatus string `json:"previous_status,omitempty"`

	// Raw is the body exactly as received.
	Raw []byte `json:"-"`
}

// TaskRelevant reports whether the event may change what a task's export
// holds: events about tasks, jobs and projects. The rest (ping, issues,
// comments, organizations, memberships, invitations, users, export
// notifications) are accepted and ignored.
func (e Envelope) TaskRelevant() bool {
	switch e.Resource {
	case ResourceTask, ResourceJob, ResourceProject:
		return e.Action == "create" || e.Action == "update" || e.Action == "delete"
	}
	return false
}

// Completed reports whether the event reports a job or task reaching the
// "completed" state or status.
func (e Envelope) Completed() bool {
	return (e.Resource == ResourceJob || e.Resource == ResourceTask) && e.Status == "completed"
}

// envelope holds every top-level key Parse reads, so the body is decoded in
// one pass; the resource object is kept raw and read by fromObject.
type envelope struct {
	Event        json.RawMessage `json:"event"`
	WebhookID    json.RawMessage `json:"webhook_id"`
	Sender       json.RawMessage `json:"sender"`
	BeforeUpdate json.RawMessage `json:"before_update"`
	Changes      json.RawMessage `json:"changes"`
	// The resource object, under its name.
	Project, Task, Job, Issue, Comment, Organization, Invitation, Membership, User, Webhook json.RawMessage
	// Flat fields of the export-notification events.
	Target   json.RawMessage `json:"target"`
	TargetID json.RawMessage `json:"target_id"`
	Status   json.RawMessage `json:"status"`
}

func (v *envelope) resource(name string) json.RawMessage {
	switch name {
	case ResourceProject:
		return v.Project
	case ResourceTask:
		return v.Task
	case ResourceJob:
		return v.Job
	case ResourceIssue:
		return v.Issue
	case ResourceComment:
		return v.Comment
	case ResourceOrganization:
		return v.Organization
	case ResourceInvitation:
		return v.Invitation
	case ResourceMembership:
		return v.Membership
	case ResourceUser:
		return v.User
	case ResourceWebhook:
		return v.Webhook
	}
	return nil
}

// Parse reads a CVAT webhook body. It fails only when the body is not a JSON
// object or has no "event"; every other field is optional.
func Parse(body []byte) (Envelope, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Envelope{}, ErrNotObject
	}
	var v envelope
	if err := json.Unmarshal(trimmed, &v); err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) {
			return Envelope{}, fmt.Errorf("%w: %s", ErrNotObject, jsonErr(err))
		}
		// A key of an unexpected type (e.g. "task": 5) is tolerated; the
		// decoder has still read the rest.
	}
	var name string
	if err := json.Unmarshal(v.Event, &name); err != nil || strings.TrimSpace(name) == "" {
		return Envelope{}, ErrNoEvent
	}
	e := Envelope{Event: name, Known: known[name], Raw: body}
	e.Action, e.Resource = split(name)
	e.WebhookID = flexID(v.WebhookID)
	e.Sender = senderName(v.Sender)
	e.Changed, e.PreviousStatus = changed(v.BeforeUpdate, v.Changes, e.Resource)

	switch e.Resource {
	case ResourceRequest, ResourceExport, ResourceBackup:
		e.fromFlat(v.Target, v.TargetID, v.Status)
	default:
		obj := v.resource(e.Resource)
		if obj == nil && e.Resource != "" && !e.Known {
			// A resource this version does not name: look it up by key.
			var top map[string]json.RawMessage
			_ = json.Unmarshal(trimmed, &top)
			obj = top[e.Resource]
		}
		e.fromObject(obj)
	}
	return e, nil
}

// split turns "update:task" into ("update", "task"), "ping" into ("ping",
// "webhook") and "completed:request[export:dataset]" into ("completed", "request").
func split(name string) (action, resource string) {
	if name == Ping {
		return Ping, ResourceWebhook
	}
	action, resource, ok := strings.Cut(name, ":")
	if !ok {
		return name, ""
	}
	if i := strings.IndexByte(resource, '['); i >= 0 {
		resource = resource[:i]
	}
	return action, resource
}

// object holds the fields cvat-sync reads from any resource object; which are
// present depends on the resource.
type object struct {
	ID             json.RawMessage `json:"id"`
	TaskID         json.RawMessage `json:"task_id"`
	ProjectID      json.RawMessage `json:"project_id"`
	Organization   json.RawMessage `json:"organization"`
	OrganizationID json.RawMessage `json:"organization_id"`
	Job            json.RawMessage `json:"job"` // issue: the job's id
	UpdatedDate    string          `json:"updated_date"`
	Status         string          `json:"status"`
	State          string          `json:"state"`
	Stage          string          `json:"stage"`
}

func (e *Envelope) fromObject(raw json.RawMessage) {
	var o object
	if len(raw) == 0 || json.Unmarshal(raw, &o) != nil {
		return
	}
	e.ObjectID = flexID(o.ID)
	e.ProjectID = flexID(o.ProjectID)
	e.OrganizationID = flexID(o.OrganizationID)
	if e.OrganizationID == 0 {
		e.OrganizationID = flexID(o.Organization)
	}
	e.UpdatedDate = parseTime(o.UpdatedDate)
	e.Status = o.Status
	switch e.Resource {
	case ResourceTask:
		e.TaskID = e.ObjectID
	case ResourceJob:
		e.JobID = e.ObjectID
		e.TaskID = flexID(o.TaskID)
		e.Status, e.Stage = o.State, o.Stage
	case ResourceProject:
		e.ProjectID = e.ObjectID
	case ResourceIssue:
		e.JobID = flexID(o.Job)
	case ResourceOrganization:
		e.OrganizationID = e.ObjectID
	case ResourceWebhook:
		e.WebhookID = e.ObjectID
	}
}

// fromFlat reads the flat bodies of the export-notification events:
// {event, status, target, target_id, rq_id, message, format, webhook_id}.
func (e *Envelope) fromFlat(targetRaw, idRaw, statusRaw json.RawMessage) {
	var target, status string
	_ = json.Unmarshal(targetRaw, &target)
	_ = json.Unmarshal(statusRaw, &status)
	e.Status = status
	id := flexID(idRaw)
	switch target {
	case ResourceTask:
		e.TaskID = id
	case ResourceJob:
		e.JobID = id
	case ResourceProject:
		e.ProjectID = id
	}
}

func senderName(raw json.RawMessage) string {
	var s struct {
		Username string `json:"username"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s.Username
}

// changed returns the sorted keys of before_update (or, if absent, changes)
// and the previous status of a task (or state of a job).
func changed(before, changes json.RawMessage, resource string) ([]string, string) {
	var m map[string]json.RawMessage
	if len(before) == 0 || json.Unmarshal(before, &m) != nil || m == nil {
		if len(changes) == 0 || json.Unmarshal(changes, &m) != nil {
			return nil, ""
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	key := "status"
	if resource == ResourceJob {
		key = "state"
	}
	var prev string
	if v, ok := m[key]; ok {
		if json.Unmarshal(v, &prev) != nil {
			// 2.73's "changes" may hold {"old": ..., "new": ...}.
			var pair struct {
				Old string `json:"old"`
			}
			if json.Unmarshal(v, &pair) == nil {
				prev = pair.Old
			}
		}
	}
	return keys, prev
}

// flexID reads an id that may be a number, a numeric string, null, or an
// object with an "id" (summary objects in some versions).
func flexID(raw json.RawMessage) int64 {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0
	}
	switch raw[0] {
	case '{':
		var o struct {
			ID json.RawMessage `json:"id"`
		}
		if json.Unmarshal(raw, &o) == nil {
			return flexID(o.ID)
		}
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			n, _ := strconv.ParseInt(s, 10, 64)
			return n
		}
	default:
		var n int64
		if json.Unmarshal(raw, &n) == nil {
			return n
		}
	}
	return 0
}

func parseTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t.UTC()
}

// jsonErr shortens a JSON decoding error without quoting the body.
func jsonErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "unexpected JSON type"
	}
	return "invalid JSON"
}
