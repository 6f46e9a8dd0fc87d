package sink

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/task"
)

// Schema names version 1 of the outbox message contract: the value of the
// "schema" attribute and data field of every notice.
const Schema = "cvat-sync.export/v1"

// Kind says what a notice reports.
type Kind string

// The kinds of notice.
const (
	KindExported Kind = "task.exported" // an archive of the task's annotations was stored
	KindDeleted  Kind = "task.deleted"  // the task was deleted in CVAT
)

// ErrInvalidNotice reports a notice that breaks the v1 contract; Publish
// refuses it rather than send consumers something they cannot use.
var ErrInvalidNotice = errors.New("sink: invalid notice")

// Notice is the data of one outbox message (contract v1, see
// docs/outbox.md and docs/outbox-v1.schema.json). It carries where the
// archive is, never the archive (the claim-check pattern).
type Notice struct {
	Schema     string     `json:"schema"` // Schema; Publish fills it in when empty
	ExportID   string     `json:"export_id"`
	Kind       Kind       `json:"kind"`
	CVAT       CVAT       `json:"cvat"`
	Task       Task       `json:"task"`
	Trigger    Trigger    `json:"trigger"`
	Format     string     `json:"format"` // exact CVAT format name; "" for task.deleted
	Object     *ObjectRef `json:"object"` // nil (null) for task.deleted
	ExportedAt time.Time  `json:"exported_at"`
}

// CVAT describes the server the task lives on.
type CVAT struct {
	BaseURL string `json:"base_url"`
	Version string `json:"version"` // "" when unknown
}

// Task describes the task as it was when exported (or deleted).
type Task struct {
	ID           int64         `json:"id"`
	Name         string        `json:"name"`
	ProjectID    NullID        `json:"project_id"`
	Organization *Organization `json:"organization"` // nil (null): personal workspace
	Status       string        `json:"status"`       // CVAT's status: annotation, validation, completed
	UpdatedDate  time.Time     `json:"updated_date"`
}

// Organization is the CVAT organization a task belongs to.
type Organization struct {
	ID   int64  `json:"id"`
	Slug string `json:"slug,omitempty"`
}

// Trigger says what caused the export.
type Trigger struct {
	// Event is the CVAT webhook event ("update:job", "update:task",
	// "delete:task", ...), or "reconcile" / "backfill" when no webhook did.
	Event     string `json:"event"`
	WebhookID NullID `json:"webhook_id"`
	JobID     NullID `json:"job_id"`
	Sender    string `json:"sender"`           // username of the webhook's sender; "" when unknown
	Coalesced int    `json:"coalesced_events"` // inbox events folded into this export
}

// ObjectRef locates the archive of a task.exported notice. The checksums
// are the values GCS holds, in GCS's own encoding (base64, big-endian).
type ObjectRef struct {
	URI        string `json:"uri"` // gs://<bucket>/<name>
	Bucket     string `json:"bucket"`
	Name       string `json:"name"`
	Generation int64  `json:"generation"`
	Size       int64  `json:"size"`
	CRC32C     string `json:"crc32c"`
	MD5        string `json:"md5"` // "" when GCS has none (composite objects)
}

// Ref returns the claim-check reference to o.
func (o Object) Ref() *ObjectRef {
	r := &ObjectRef{
		URI:        o.URI,
		Bucket:     o.Bucket,
		Name:       o.Name,
		Generation: o.Generation,
		Size:       o.Size,
		CRC32C:     o.CRC32CBase64(),
	}
	if len(o.MD5) > 0 {
		r.MD5 = encodeBase64(o.MD5)
	}
	return r
}

// NullID is an optional CVAT id: 0 means none and is encoded as JSON null.
type NullID int64

// MarshalJSON encodes 0 as null.
func (id NullID) MarshalJSON() ([]byte, error) {
	if id == 0 {
		return []byte("null"), nil
	}
	return strconv.AppendInt(nil, int64(id), 10), nil
}

// UnmarshalJSON decodes null as 0.
func (id *NullID) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*id = 0
		return nil
	}
	var v int64
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	*id = NullID(v)
	return nil
}

// ExportID returns the export_id of a notice about o: derived from the
// object's bucket, name and generation, so publishing the same object again
// yields the same id, and a rewritten object (a new generation) a new one.
func ExportID(o Object) string {
	return digest("task.exported", o.Bucket, o.Name, strconv.FormatInt(o.Generation, 10))
}

// DeletionID returns the export_id of the deletion notice of a task, from
// the task id and the updated_date CVAT reported with the deletion.
func DeletionID(taskID int64, updated time.Time) string {
	return digest("task.deleted", strconv.FormatInt(taskID, 10), updated.UTC().Format(time.RFC3339Nano))
}

func digest(parts ...string) string {
	h := sha256.New()
	h.Write([]byte(Schema))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// NewExportNotice returns the task.exported notice of the archive o, an
// export of st in format.
func NewExportNotice(o Object, format string, cvat CVAT, st task.State, trig task.Trigger, exportedAt time.Time) Notice {
	return Notice{
		Schema:     Schema,
		ExportID:   ExportID(o),
		Kind:       KindExported,
		CVAT:       cvat,
		Task:       wireTask(st),
		Trigger:    wireTrigger(trig),
		Format:     format,
		Object:     o.Ref(),
		ExportedAt: exportedAt,
	}
}

// NewDeletionNotice returns the task.deleted notice of the task last
// recorded as st; st.UpdatedDate names the deletion, so announcing it again
// gives the same export_id.
func NewDeletionNotice(cvat CVAT, st task.State, trig task.Trigger, at time.Time) Notice {
	return Notice{
		Schema:     Schema,
		ExportID:   DeletionID(st.ID, st.UpdatedDate),
		Kind:       KindDeleted,
		CVAT:       cvat,
		Task:       wireTask(st),
		Trigger:    wireTrigger(trig),
		ExportedAt: at,
	}
}

func wireTask(st task.State) Task {
	t := Task{ID: st.ID, Name: st.Name, ProjectID: NullID(st.ProjectID), Status: st.Status, UpdatedDate: st.UpdatedDate}
	if st.OrganizationID != 0 {
		t.Organization = &Organization{ID: st.OrganizationID}
	}
	return t
}

func wireTrigger(t task.Trigger) Trigger {
	return Trigger{Event: t.Event, WebhookID: NullID(t.WebhookID), JobID: NullID(t.JobID), Sender: t.Sender, Coalesced: t.Coalesced}
}

// Attributes returns the message attributes of n (contract v1).
func (n Notice) Attributes() map[string]string {
	a := map[string]string{
		"schema":     Schema,
		"kind":       string(n.Kind),
		"task_id":    strconv.FormatInt(n.Task.ID, 10),
		"project_id": "",
		"format":     n.Format,
		"export_id":  n.ExportID,
	}
	if n.Task.ProjectID != 0 {
		a["project_id"] = strconv.FormatInt(int64(n.Task.ProjectID), 10)
	}
	return a
}

// Validate reports how n breaks the v1 contract, if it does.
func (n Notice) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidNotice, fmt.Sprintf(format, args...))
	}
	switch {
	case n.Schema != "" && n.Schema != Schema:
		return bad("schema %q, want %q", n.Schema, Schema)
	case n.ExportID == "":
		return bad("empty export_id")
	case n.Task.ID <= 0:
		return bad("task id %d is not positive", n.Task.ID)
	case n.Task.UpdatedDate.IsZero():
		return bad("task %d: zero updated_date", n.Task.ID)
	case n.ExportedAt.IsZero():
		return bad("task %d: zero exported_at", n.Task.ID)
	case n.CVAT.BaseURL == "":
		return bad("task %d: empty cvat.base_url", n.Task.ID)
	case n.Trigger.Event == "":
		return bad("task %d: empty trigger.event", n.Task.ID)
	case n.Trigger.Coalesced < 0:
		return bad("task %d: negative coalesced_events", n.Task.ID)
	}
	switch n.Kind {
	case KindExported:
		o := n.Object
		switch {
		case n.Format == "":
			return bad("task %d: task.exported without a format", n.Task.ID)
		case o == nil:
			return bad("task %d: task.exported without an object", n.Task.ID)
		case o.Bucket == "" || o.Name == "" || o.Generation <= 0 || o.CRC32C == "":
			return bad("task %d: incomplete object %+v", n.Task.ID, *o)
		case o.URI != "gs://"+o.Bucket+"/"+o.Name:
			return bad("task %d: object uri %q is not gs://<bucket>/<name>", n.Task.ID, o.URI)
		}
	case KindDeleted:
		if n.Object != nil || n.Format != "" {
			return bad("task %d: task.deleted with an object or a format", n.Task.ID)
		}
	default:
		return bad("task %d: unknown kind %q", n.Task.ID, n.Kind)
	}
	return nil
}

// Marshal returns the message data of n: the JSON of the v1 contract, times
// in UTC.
func (n Notice) Marshal() ([]byte, error) {
	if n.Schema == "" {
		n.Schema = Schema
	}
	n.Task.UpdatedDate = n.Task.UpdatedDate.UTC()
	n.ExportedAt = n.ExportedAt.UTC()
	b, err := json.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("encode notice for task %d: %w", n.Task.ID, err)
	}
	return b, nil
}
