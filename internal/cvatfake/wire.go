package cvatfake

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The structs below mirror CVAT 2.64.0's read serializers field by field and
// in order: encoding/json keeps struct order, and webhook bodies must match
// CVAT's key order byte for byte.

type userJSON struct {
	URL       string `json:"url"`
	ID        int64  `json:"id"`
	Username  string `json:"username"`
	FirstName string `json:"first_name"`
	LastName  string `json:"last_name"`
}

type urlJSON struct {
	URL string `json:"url"`
}

type taskJobsJSON struct {
	Count      int64  `json:"count"`
	Completed  *int64 `json:"completed"`
	Validation *int64 `json:"validation"`
	URL        string `json:"url"`
}

type taskJSON struct {
	shape273 bool // 2.73.0+: media_type added, mode moved after dimension

	URL                     string       `json:"url"`
	ID                      int64        `json:"id"`
	Name                    string       `json:"name"`
	ProjectID               *int64       `json:"project_id"`
	ProjectName             *string      `json:"project_name"`
	Mode                    string       `json:"mode"`
	Owner                   userJSON     `json:"owner"`
	Assignee                *userJSON    `json:"assignee"`
	BugTracker              string       `json:"bug_tracker"`
	CreatedDate             string       `json:"created_date"`
	UpdatedDate             string       `json:"updated_date"`
	Overlap                 int64        `json:"overlap"`
	SegmentSize             int64        `json:"segment_size"`
	Status                  string       `json:"status"`
	DataChunkSize           int64        `json:"data_chunk_size"`
	DataOriginalChunkType   string       `json:"data_original_chunk_type"`
	DataCompressedChunkType string       `json:"data_compressed_chunk_type"`
	DataCloudStorageID      *int64       `json:"data_cloud_storage_id"`
	GuideID                 *int64       `json:"guide_id"`
	Size                    int64        `json:"size"`
	ImageQuality            int64        `json:"image_quality"`
	Data                    int64        `json:"data"`
	Dimension               string       `json:"dimension"`
	Subset                  string       `json:"subset"`
	OrganizationID          *int64       `json:"organization_id"`
	Organization            *int64       `json:"organization"`
	TargetStorage           *struct{}    `json:"target_storage"`
	SourceStorage           *struct{}    `json:"source_storage"`
	Jobs                    taskJobsJSON `json:"jobs"`
	Labels                  urlJSON      `json:"labels"`
	AssigneeUpdatedDate     *string      `json:"assignee_updated_date"`
	ValidationMode          *string      `json:"validation_mode"`
	ConsensusEnabled        bool         `json:"consensus_enabled"`
}

// MarshalJSON renders the task in its release's field order: 2.73.0's
// serializer adds media_type and moves mode after dimension
// (payloads/v2.73.0/update_task.json).
func (t taskJSON) MarshalJSON() ([]byte, error) {
	type plain taskJSON
	b, err := marshal(plain(t))
	if err != nil || !t.shape273 {
		return b, err
	}
	v, err := parseOrdered(b)
	if err != nil {
		return nil, err
	}
	in := v.(ordered)
	out := make(ordered, 0, len(in)+1)
	for _, p := range in {
		switch p.k {
		case "mode":
		case "dimension":
			out = append(out, p, pair{"mode", t.Mode}, pair{"media_type", "image"})
		default:
			out = append(out, p)
		}
	}
	return marshal(out)
}

type issuesJSON struct {
	URL   string `json:"url"`
	Count int64  `json:"count"`
}

type jobJSON struct {
	URL                     string     `json:"url"`
	ID                      int64      `json:"id"`
	TaskID                  int64      `json:"task_id"`
	TaskName                string     `json:"task_name"`
	ProjectID               *int64     `json:"project_id"`
	ProjectName             *string    `json:"project_name"`
	Assignee                *userJSON  `json:"assignee"`
	GuideID                 *int64     `json:"guide_id"`
	Dimension               string     `json:"dimension"`
	BugTracker              string     `json:"bug_tracker"`
	Status                  string     `json:"status"`
	Stage                   string     `json:"stage"`
	State                   string     `json:"state"`
	Mode                    string     `json:"mode"`
	FrameCount              int64      `json:"frame_count"`
	StartFrame              int64      `json:"start_frame"`
	StopFrame               int64      `json:"stop_frame"`
	DataChunkSize           int64      `json:"data_chunk_size"`
	DataCompressedChunkType string     `json:"data_compressed_chunk_type"`
	DataOriginalChunkType   string     `json:"data_original_chunk_type"`
	CreatedDate             string     `json:"created_date"`
	UpdatedDate             string     `json:"updated_date"`
	Issues                  issuesJSON `json:"issues"`
	Labels                  urlJSON    `json:"labels"`
	Type                    string     `json:"type"`
	Organization            *int64     `json:"organization"`
	TargetStorage           *struct{}  `json:"target_storage"`
	SourceStorage           *struct{}  `json:"source_storage"`
	AssigneeUpdatedDate     *string    `json:"assignee_updated_date"`
	ParentJobID             *int64     `json:"parent_job_id"`
	ConsensusReplicas       int64      `json:"consensus_replicas"`
	ReplicasCount           int64      `json:"replicas_count"`
}

type countURLJSON struct {
	Count int64  `json:"count"`
	URL   string `json:"url"`
}

type projectJSON struct {
	URL                 string       `json:"url"`
	ID                  int64        `json:"id"`
	Name                string       `json:"name"`
	Owner               userJSON     `json:"owner"`
	Assignee            *userJSON    `json:"assignee"`
	GuideID             *int64       `json:"guide_id"`
	BugTracker          string       `json:"bug_tracker"`
	TaskSubsets         []string     `json:"task_subsets"`
	CreatedDate         string       `json:"created_date"`
	UpdatedDate         string       `json:"updated_date"`
	Status              string       `json:"status"`
	Dimension           *string      `json:"dimension"`
	Organization        *int64       `json:"organization"`
	OrganizationID      *int64       `json:"organization_id"`
	TargetStorage       *struct{}    `json:"target_storage"`
	SourceStorage       *struct{}    `json:"source_storage"`
	Tasks               countURLJSON `json:"tasks"`
	Labels              urlJSON      `json:"labels"`
	AssigneeUpdatedDate *string      `json:"assignee_updated_date"`
}

// pair and ordered build JSON objects whose key order is chosen at run time
// (webhook envelopes: the resource key depends on the event).
type pair struct {
	k string
	v any
}

type ordered []pair

func (o ordered) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, p := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(p.k)
		b.Write(k)
		b.WriteByte(':')
		v, err := marshal(p.v)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// decodeOrdered parses JSON keeping key order (objects become ordered,
// numbers json.Number), so re-encoding reproduces the input's structure.
func decodeOrdered(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	if d == '[' {
		arr := []any{}
		for dec.More() {
			v, err := decodeOrdered(dec)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.Token()
		return arr, err
	}
	obj := ordered{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, err
		}
		v, err := decodeOrdered(dec)
		if err != nil {
			return nil, err
		}
		obj = append(obj, pair{k.(string), v})
	}
	_, err = dec.Token()
	return obj, err
}

// parseOrdered decodes one JSON value with decodeOrdered.
func parseOrdered(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return decodeOrdered(dec)
}

// jsonbOrder returns v with every object's keys in PostgreSQL jsonb order:
// shorter keys first, keys of one length bytewise. CVAT keeps a delivery's
// request in a jsonb column, so that is the order it reads it back in (the
// deliveries API, and the body of a redelivery).
func jsonbOrder(v any) any {
	switch x := v.(type) {
	case ordered:
		out := make(ordered, len(x))
		for i, p := range x {
			out[i] = pair{p.k, jsonbOrder(p.v)}
		}
		slices.SortStableFunc(out, func(a, b pair) int {
			if c := cmp.Compare(len(a.k), len(b.k)); c != 0 {
				return c
			}
			return cmp.Compare(a.k, b.k)
		})
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonbOrder(e)
		}
		return out
	}
	return v
}

// get returns the value of key k, or nil.
func (o ordered) get(k string) any {
	for _, p := range o {
		if p.k == k {
			return p.v
		}
	}
	return nil
}

func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// pyJSON serialises v the way Python's json.dumps does with its defaults,
// which is how CVAT puts webhook bodies on the wire: ", " and ": "
// separators, non-ASCII escaped as \uXXXX (surrogate pairs above the BMP).
func pyJSON(v any) ([]byte, error) {
	compact, err := marshal(v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(compact)+len(compact)/8)
	inString, escaped := false, false
	for i := 0; i < len(compact); {
		c := compact[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(compact[i:])
			if r > 0xFFFF {
				r -= 0x10000
				out = fmt.Appendf(out, `\u%04x\u%04x`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
			} else {
				out = fmt.Appendf(out, `\u%04x`, r)
			}
			i += size
			continue
		}
		out = append(out, c)
		i++
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && (c == ',' || c == ':'):
			out = append(out, ' ')
		}
	}
	return out, nil
}

// cvatTime formats a date like DRF: UTC, Z, microseconds only when non-zero.
func cvatTime(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05Z")
	}
	return t.Format("2006-01-02T15:04:05.000000Z")
}

func ptr[T any](v T) *T { return &v }

func optID(id int64) *int64 {
	if id == 0 {
		return nil
	}
	return &id
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
