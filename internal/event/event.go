// Package event parses the JSON envelope of CVAT webhook deliveries.
//
// CVAT's envelope changed over its releases: key order (2.3, 2.4.2, 2.44,
// 2.73), before_update (on every update up to 2.4.1, only when something
// differs from 2.4.2, always with "changes" in 2.73, never after 2.73),
// relative URLs and a short sender for events raised in background workers,
// flat bodies for the export events of 2.65-2.72 and a "request" object for
// 2.73's completed:request events. Parse reads by key, treats everything but
// "event" as optional, except the ids the pipeline needs, and keeps the raw
// bytes.
package event

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Sentinel errors of Parse; the ingress answers 400 for each.
var (
	// ErrNotObject means the body is not a JSON object.
	ErrNotObject = errors.New("body is not a JSON object")
	// ErrNoEvent means the object has no non-empty string "event".
	ErrNoEvent = errors.New(`body has no "event" string`)
	// ErrInvalidID means a task-relevant event lacks an id the pipeline needs,
	// or has one that is not a positive integer within int64. Parse returns it
	// as a *FieldError naming the field.
	ErrInvalidID = errors.New("id cannot be read")
)

// FieldError names the field of a task-relevant event whose id cannot be
// read: "task.id", "job.task_id", "project.id", or the resource object
// itself ("task") when it is missing or not an object. Its message starts
// with the field ("task.id: is a string, want a positive integer") and never
// quotes the value.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

// Unwrap makes errors.Is(err, ErrInvalidID) true.
func (e *FieldError) Unwrap() error { return ErrInvalidID }

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
	slices.Sort(out)
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
	// Changed lists the keys of before_update (or, without it, of changes),
	// sorted: serializer field names up to 2.72, model attribute names
	// (assignee_id) in 2.73. Informational: CVAT after 2.73 sends neither key,
	// so nothing may depend on it.
	Changed []string `json:"changed,omitempty"`
	// PreviousStatus is the old task status or job state when the payload
	// carries it (before_update, or 2.73's changes.<field>.from).
	// Informational, like Changed: decide from the current Status.
	PreviousStatus string `json:"previous_status,omitempty"`

	// Raw is the body exactly as received. It is the caller's buffer, which
	// the ingress reuses once it has answered: copy what must outlive the
	// request.
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

// top holds the spans of the top-level values Parse reads, and the fields of
// every object that may be the resource, read in the same pass (which one
// is depends on "event", which may come last). A span is [start, end) in the
// body; end == 0 means absent.
type top struct {
	event, webhookID, sender, beforeUpdate, changes span
	target, targetID, status, request               span
	username                                        []byte
	resources                                       [len(resourceKeys)]resourceValue
}

// tops are pooled: the callbacks make a top escape, and it is 2.5 KB.
var tops = sync.Pool{New: func() any { return new(top) }}

// resourceKeys are the keys a resource object comes under.
var resourceKeys = [...]string{ResourceProject, ResourceTask, ResourceJob, ResourceIssue, ResourceComment,
	ResourceOrganization, ResourceInvitation, ResourceMembership, ResourceUser, ResourceWebhook}

type resourceValue struct {
	span
	fields fields
}

type span struct{ start, end int }

func (s span) in(body []byte) []byte {
	if s.end == 0 {
		return nil
	}
	return body[s.start:s.end]
}

// resourceIndex is name's index in resourceKeys, or -1.
func resourceIndex(name string) int {
	for i, k := range resourceKeys {
		if k == name {
			return i
		}
	}
	return -1
}

func (t *top) slot(key string) *span {
	switch key {
	case "event":
		return &t.event
	case "webhook_id":
		return &t.webhookID
	case "sender":
		return &t.sender
	case "before_update":
		return &t.beforeUpdate
	case "changes":
		return &t.changes
	case "target":
		return &t.target
	case "target_id":
		return &t.targetID
	case "status":
		return &t.status
	case ResourceRequest:
		return &t.request
	}
	if i := resourceIndex(key); i >= 0 {
		return &t.resources[i].span
	}
	return nil
}

// nested reads the objects whose fields Parse needs while they are
// validated: the resources and the sender.
func (t *top) nested(body []byte) nested {
	return func(key []byte, escaped bool) member {
		k := string(keyBytes(key, escaped))
		if k == "sender" {
			t.username = nil
			return func(key []byte, escaped bool, vs, ve int) {
				if keyIs(key, escaped, "username") {
					t.username = body[vs:ve]
				}
			}
		}
		if i := resourceIndex(k); i >= 0 {
			// A repeated key: the last object counts, as in encoding/json.
			t.resources[i].fields = fields{}
			return t.resources[i].fields.collect(body)
		}
		return nil
	}
}

// keyBytes is the key with its escapes decoded. Switched on or compared as
// string(keyBytes(...)), the usual key without escapes is not copied.
func keyBytes(key []byte, escaped bool) []byte {
	if escaped {
		return []byte(unquote(key))
	}
	return key
}

// Parse reads a CVAT webhook body. It fails with ErrNotObject when the body
// is not a JSON object, ErrNoEvent when it has no "event", and a *FieldError
// (ErrInvalidID) when a create, update or delete of a task, job or project
// lacks an id the pipeline needs; with a *FieldError the Envelope still names
// the event, for metrics and logs. Everything else is optional.
func Parse(body []byte) (Envelope, error) {
	sc := scanner{data: body}
	i := sc.ws(0)
	if i >= len(body) || body[i] != '{' {
		return Envelope{}, ErrNotObject
	}
	t := tops.Get().(*top)
	defer func() { *t = top{}; tops.Put(t) }()
	end, err := sc.object(i, func(key []byte, escaped bool, vs, ve int) {
		if slot := t.slot(string(keyBytes(key, escaped))); slot != nil {
			// A repeated key: the last one counts, as in encoding/json.
			*slot = span{vs, ve}
		}
	}, t.nested(body))
	if err == nil && sc.ws(end) != len(body) {
		err = sc.fail(sc.ws(end))
	}
	if err != nil {
		return Envelope{}, fmt.Errorf("%w: %w", ErrNotObject, err)
	}

	name := stringValue(t.event.in(body))
	if strings.TrimSpace(name) == "" {
		return Envelope{}, ErrNoEvent
	}
	e := Envelope{Event: name, Known: known[name], Raw: body}
	e.Action, e.Resource = Split(name)
	e.WebhookID = lenientID(t.webhookID.in(body))
	if s := t.sender.in(body); len(s) > 0 && s[0] == '{' {
		e.Sender = stringValue(t.username)
	}
	e.Changed, e.PreviousStatus = changed(t.beforeUpdate.in(body), t.changes.in(body), e.Resource)

	switch e.Resource {
	case ResourceRequest:
		if r := t.request.in(body); r != nil {
			e.fromRequest(r)
		} else {
			e.fromFlat(t.target.in(body), t.targetID.in(body), t.status.in(body))
		}
		return e, nil
	case ResourceExport, ResourceBackup:
		e.fromFlat(t.target.in(body), t.targetID.in(body), t.status.in(body))
		return e, nil
	}
	var obj []byte
	var f fields
	if ri := resourceIndex(e.Resource); ri >= 0 {
		obj = t.resources[ri].in(body)
		if len(obj) > 0 && obj[0] == '{' {
			f = t.resources[ri].fields
		}
	} else if e.Resource != "" {
		// A resource no release names yet: look it up by key.
		members(body[i:end], func(key []byte, escaped bool, vs, ve int) {
			if keyIs(key, escaped, e.Resource) {
				obj = body[vs:ve]
			}
		})
		f = fields{}
		members(obj, f.collect(obj))
	}
	e.fromFields(f)
	if e.TaskRelevant() {
		if err := f.check(e.Resource, obj); err != nil {
			return e, err
		}
	}
	return e, nil
}

// Split returns the action and the resource an event name stands for:
// "update:task" is ("update", "task"), "ping" is ("ping", "webhook") and
// "completed:request[export:dataset]" is ("completed", "request").
func Split(name string) (action, resource string) {
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

// fields holds the raw values cvat-sync reads from any resource object;
// which are present depends on the resource.
type fields struct {
	id, taskID, projectID, organization, organizationID, job []byte
	updated, status, state, stage                            []byte
}

// collect returns the member function that fills f from an object in data.
func (f *fields) collect(data []byte) member {
	return func(key []byte, escaped bool, vs, ve int) {
		v := data[vs:ve]
		switch string(keyBytes(key, escaped)) {
		case "id":
			f.id = v
		case "task_id":
			f.taskID = v
		case "project_id":
			f.projectID = v
		case "organization":
			f.organization = v
		case "organization_id":
			f.organizationID = v
		case "job":
			f.job = v
		case "updated_date":
			f.updated = v
		case "status":
			f.status = v
		case "state":
			f.state = v
		case "stage":
			f.stage = v
		}
	}
}

// fromFields fills e from its resource object's fields.
func (e *Envelope) fromFields(f fields) {
	e.ObjectID = lenientID(f.id)
	e.ProjectID = lenientID(f.projectID)
	e.OrganizationID = lenientID(f.organizationID)
	if e.OrganizationID == 0 {
		e.OrganizationID = lenientID(f.organization)
	}
	e.UpdatedDate = parseTime(stringValue(f.updated))
	e.Status = stringValue(f.status)
	switch e.Resource {
	case ResourceTask:
		e.TaskID = e.ObjectID
	case ResourceJob:
		e.JobID = e.ObjectID
		e.TaskID = lenientID(f.taskID)
		e.Status, e.Stage = stringValue(f.state), stringValue(f.stage)
	case ResourceProject:
		e.ProjectID = e.ObjectID
	case ResourceIssue:
		e.JobID = lenientID(f.job)
	case ResourceOrganization:
		e.OrganizationID = e.ObjectID
	case ResourceWebhook:
		e.WebhookID = e.ObjectID
	}
}

// check returns a *FieldError for the first id of a task-relevant event that
// the pipeline needs and cannot read. The resource's id (and a job's task_id)
// are required; project_id and organization may be null (a task outside any
// project or organization) but must be readable when given.
func (o fields) check(resource string, raw []byte) error {
	switch {
	case raw == nil:
		return &FieldError{Field: resource, Problem: "missing"}
	case raw[0] != '{':
		return &FieldError{Field: resource, Problem: kind(raw) + ", want an object"}
	}
	if p := idProblem(o.id, false); p != "" {
		return &FieldError{Field: resource + ".id", Problem: p}
	}
	if resource == ResourceJob {
		if p := idProblem(o.taskID, false); p != "" {
			return &FieldError{Field: resource + ".task_id", Problem: p}
		}
	}
	if resource != ResourceProject {
		if p := idProblem(o.projectID, true); p != "" {
			return &FieldError{Field: resource + ".project_id", Problem: p}
		}
	}
	if p := idProblem(o.organizationID, true); p != "" {
		return &FieldError{Field: resource + ".organization_id", Problem: p}
	}
	if p := idProblem(o.organization, true); p != "" {
		return &FieldError{Field: resource + ".organization", Problem: p}
	}
	return nil
}

// readID reads a positive int64 written as a JSON integer. It returns 0 and
// what is wrong otherwise ("missing" when raw is nil).
func readID(raw []byte) (int64, string) {
	if raw == nil {
		return 0, "missing"
	}
	switch c := raw[0]; {
	case c == 'n':
		return 0, "is null"
	case c != '-' && (c < '0' || c > '9'):
		return 0, kind(raw) + ", want a positive integer"
	}
	if i := strings.IndexAny(string(raw), ".eE"); i >= 0 {
		return 0, "is not an integer"
	}
	if raw[0] == '-' {
		return 0, "is negative"
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	switch {
	case err != nil:
		return 0, "is larger than int64"
	case n == 0:
		return 0, "is zero"
	}
	return n, ""
}

// idProblem is readID's complaint, if any; a nullable id may be absent or null.
func idProblem(raw []byte, nullable bool) string {
	if nullable && (raw == nil || raw[0] == 'n') {
		return ""
	}
	_, p := readID(raw)
	return p
}

// lenientID is the id in raw, or 0 when it cannot be read: for the ids only
// logs and notices carry (webhook_id, an issue's job).
func lenientID(raw []byte) int64 {
	n, _ := readID(raw)
	return n
}

// kind names the JSON type of a validated value.
func kind(raw []byte) string {
	switch raw[0] {
	case '"':
		return "is a string"
	case '{':
		return "is an object"
	case '[':
		return "is an array"
	case 't', 'f':
		return "is a boolean"
	case 'n':
		return "is null"
	}
	return "is a number"
}

// fromFlat reads the flat bodies of the export events of 2.65-2.72:
// {event, status, target, target_id, rq_id, message, format, webhook_id}.
func (e *Envelope) fromFlat(target, id, status []byte) {
	e.Status = stringValue(status)
	e.setTarget(stringValue(target), lenientID(id))
}

// fromRequest reads 2.73's completed:request bodies: {event, request,
// webhook_id}, request being the GET /api/requests/{id} body whose
// "operation" names the target.
func (e *Envelope) fromRequest(raw []byte) {
	var op []byte
	members(raw, func(key []byte, escaped bool, vs, ve int) {
		switch {
		case keyIs(key, escaped, "status"):
			e.Status = stringValue(raw[vs:ve])
		case keyIs(key, escaped, "operation"):
			op = raw[vs:ve]
		}
	})
	var target string
	members(op, func(key []byte, escaped bool, vs, ve int) {
		v := op[vs:ve]
		switch {
		case keyIs(key, escaped, "target"):
			target = stringValue(v)
		case keyIs(key, escaped, "task_id"):
			e.TaskID = lenientID(v)
		case keyIs(key, escaped, "job_id"):
			e.JobID = lenientID(v)
		case keyIs(key, escaped, "project_id"):
			e.ProjectID = lenientID(v)
		}
	})
	e.setTarget(target, 0)
}

func (e *Envelope) setTarget(target string, id int64) {
	switch target {
	case ResourceTask:
		e.ObjectID = cmpOr(id, e.TaskID)
		e.TaskID = e.ObjectID
	case ResourceJob:
		e.ObjectID = cmpOr(id, e.JobID)
		e.JobID = e.ObjectID
	case ResourceProject:
		e.ObjectID = cmpOr(id, e.ProjectID)
		e.ProjectID = e.ObjectID
	}
}

func cmpOr(a, b int64) int64 {
	if a != 0 {
		return a
	}
	return b
}

// stringField returns the string member key of the object raw, or "".
func stringField(raw []byte, key string) string {
	var out string
	members(raw, func(k []byte, escaped bool, vs, ve int) {
		if keyIs(k, escaped, key) {
			out = stringValue(raw[vs:ve])
		}
	})
	return out
}

// changed returns the sorted keys of before_update (or, if it is absent or
// not an object, of changes) and the previous status of a task (or state of
// a job): before_update's value, else 2.73's changes.<field>.from.
func changed(before, changes []byte, resource string) ([]string, string) {
	field := "status"
	if resource == ResourceJob {
		field = "state"
	}
	var keys []string
	var prev string
	collect := func(raw []byte, value func(v []byte) string) {
		keys = []string{}
		members(raw, func(key []byte, escaped bool, vs, ve int) {
			k := string(key)
			if escaped {
				k = unquote(key)
			}
			keys = append(keys, k)
			if k == field {
				prev = value(raw[vs:ve])
			}
		})
	}
	switch {
	case len(before) > 0 && before[0] == '{':
		collect(before, stringValue)
		if prev == "" {
			// 2.73 has both; its changes also hold the old value.
			_, prev = changed(nil, changes, resource)
		}
	case len(changes) > 0 && changes[0] == '{':
		collect(changes, func(v []byte) string { return stringField(v, "from") })
	default:
		return nil, ""
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	return keys, prev
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
