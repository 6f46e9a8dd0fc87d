package cvatfake

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

func (s *Server) about(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, ordered{
		{"name", "Computer Vision Annotation Tool"},
		{"description", "CVAT is completely re-designed and re-implemented version of Video Annotation Tool from Irvine, California tool."},
		{"version", s.opts.Version},
		{"logo_url", s.base(r) + "/static/logo.svg"},
		{"subtitle", "Open Data Annotation Platform"},
	})
}

// usersSelf is GET /api/users/self: the authenticated user (UserSerializer
// for one's own GET).
func (s *Server) usersSelf(w http.ResponseWriter, r *http.Request) {
	base := s.base(r)
	writeJSON(w, http.StatusOK, ordered{
		{"url", base + "/api/users/" + itoa(userID)}, {"id", userID}, {"username", userName},
		{"first_name", "User"}, {"last_name", "Seventh"}, {"email", "user7@cvat.example"},
		{"groups", []string{"user"}}, {"is_staff", false}, {"is_superuser", false}, {"is_active", true},
		{"last_login", nil}, {"date_joined", "2021-12-14T19:46:37.969000Z"},
	})
}

type formatJSON struct {
	Name      string `json:"name"`
	Ext       string `json:"ext"`
	Version   string `json:"version"`
	Enabled   bool   `json:"enabled"`
	Dimension string `json:"dimension"`
}

// ExportFormats returns the enabled export formats the fake offers (a
// subset of CVAT 2.64.0's); DisabledFormat is offered too, disabled.
func ExportFormats() []string { return slices.Clone(exporters) }

var exporters = []string{
	"CVAT for images 1.1", "CVAT for video 1.1", "COCO 1.0", "COCO Keypoints 1.0",
	"Datumaro 1.0", "PASCAL VOC 1.1", "Segmentation mask 1.1", "YOLO 1.1",
	"Ultralytics YOLO Detection 1.0", "ImageNet 1.0", "LabelMe 3.0", "MOT 1.1",
}

// DisabledFormat is offered but disabled, like a format CVAT's admin turned off.
const DisabledFormat = "Disabled Format 1.0"

func formatInfo(name string) formatJSON {
	i := strings.LastIndexByte(name, ' ')
	ext := "ZIP"
	if strings.HasPrefix(name, "CVAT for") {
		ext = "XML, ZIP"
	} else if strings.HasPrefix(name, "COCO") || strings.HasPrefix(name, "Datumaro") {
		ext = "JSON, ZIP"
	}
	return formatJSON{Name: name, Ext: ext, Version: name[i+1:], Enabled: name != DisabledFormat, Dimension: "2d"}
}

func (s *Server) formats(w http.ResponseWriter, r *http.Request) {
	var exp, imp []formatJSON
	for _, n := range exporters {
		exp = append(exp, formatInfo(n))
		if !strings.HasPrefix(n, "CVAT for") {
			imp = append(imp, formatInfo(n))
		}
	}
	exp = append(exp, formatInfo(DisabledFormat))
	imp = append(imp, formatInfo("CVAT 1.1"))
	writeJSON(w, http.StatusOK, ordered{{"importers", imp}, {"exporters", exp}})
}

// visible applies CVAT's organization context to listings
// (OrganizationFilterBackend): with X-Organization only that organization's
// resources, without it the personal sandbox.
func visible(r *http.Request, org string) bool { return r.Header.Get("X-Organization") == org }

// lookup finds resource {id} of the request, or answers 404. As in CVAT, a
// detail request finds the object by id whatever the organization context:
// the permission check then uses the object's own organization, of which
// the fake's user is a member. The caller holds s.mu.
func lookup[T any](w http.ResponseWriter, r *http.Request, m map[int64]*T, model string) *T {
	id, _ := pathID(r)
	v, ok := m[id]
	if !ok {
		notFound(w, model)
		return nil
	}
	return v
}

// lookupTask finds task {id}, or answers 404, or CVAT's 403 for a task the
// credentials may not see (HideTask). The caller holds s.mu.
func (s *Server) lookupTask(w http.ResponseWriter, r *http.Request) *Task {
	t := lookup(w, r, s.tasks, "Task")
	if t != nil && s.hidden[t.ID] {
		forbidden(w)
		return nil
	}
	return t
}

// restTask renders a task as the REST API does. A task without data has
// "data": null and size 0 (the shared serializer struct cannot say so). The
// caller holds s.mu.
func (s *Server) restTask(t *Task, base string) json.RawMessage {
	b, err := marshal(s.taskJSON(t, base, true))
	if err != nil {
		panic(err) // only our own structs are encoded
	}
	if t.NoData {
		b = bytes.Replace(b, []byte(`"size":`+itoa(t.Size)+`,`), []byte(`"size":0,`), 1)
		b = bytes.Replace(b, []byte(`"data":`+itoa(t.ID)+`,`), []byte(`"data":null,`), 1)
	}
	return b
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.lookupTask(w, r); t != nil {
		writeRawJSON(w, http.StatusOK, s.restTask(t, s.base(r)))
	}
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := lookup(w, r, s.jobs, "Job"); j != nil {
		writeJSON(w, http.StatusOK, s.jobJSON(j, s.base(r), true))
	}
}

func (s *Server) getProject(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := lookup(w, r, s.projects, "Project"); p != nil {
		writeJSON(w, http.StatusOK, s.projectJSON(p, s.base(r)))
	}
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	var jobs []*Job
	for _, j := range s.jobs {
		t := s.tasks[j.TaskID]
		if visible(r, t.Org) && !s.hidden[t.ID] && (!q.Has("task_id") || q.Get("task_id") == itoa(j.TaskID)) {
			jobs = append(jobs, j)
		}
	}
	slices.SortFunc(jobs, func(a, b *Job) int { return cmp.Compare(b.ID, a.ID) })
	items := make([]any, 0, len(jobs))
	for _, j := range jobs {
		items = append(items, s.jobJSON(j, s.base(r), true))
	}
	s.mu.Unlock()
	s.paginate(w, r, items)
}

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var rule any
	if f := q.Get("filter"); f != "" {
		if err := json.Unmarshal([]byte(f), &rule); err != nil {
			badRequest(w, "filter", "filter parameter must be a valid JSON: "+err.Error())
			return
		}
	}
	s.mu.Lock()
	// SimpleFilter (project_id=, status=, ...) arrived in 2.4.0; 2.3.x
	// ignores those parameters and lists every visible task.
	simple := s.ver.atLeast(2, 4)
	var tasks []*Task
	for _, t := range s.tasks {
		if !visible(r, t.Org) || s.hidden[t.ID] {
			continue
		}
		if simple && q.Has("project_id") && q.Get("project_id") != itoa(t.ProjectID) {
			continue
		}
		if simple && q.Has("status") && q.Get("status") != t.Status {
			continue
		}
		if rule != nil {
			ok, err := s.match(rule, t)
			if err != nil {
				s.mu.Unlock()
				badRequest(w, "filter", err.Error())
				return
			}
			if !ok {
				continue
			}
		}
		tasks = append(tasks, t)
	}
	if err := sortTasks(tasks, q.Get("sort")); err != nil {
		s.mu.Unlock()
		badRequest(w, "sort", err.Error())
		return
	}
	items := make([]any, 0, len(tasks))
	for _, t := range tasks {
		items = append(items, s.restTask(t, s.base(r)))
	}
	s.mu.Unlock()
	s.paginate(w, r, items)
}

func sortTasks(tasks []*Task, spec string) error {
	if spec == "" {
		spec = "-id" // CVAT lists newest first
	}
	keys := strings.Split(spec, ",")
	for _, k := range keys {
		switch strings.TrimPrefix(k, "-") {
		case "id", "updated_date", "name", "status", "project_id":
		default:
			return fmt.Errorf("unsupported sort field %q", k)
		}
	}
	slices.SortStableFunc(tasks, func(a, b *Task) int {
		for _, k := range keys {
			field := strings.TrimPrefix(k, "-")
			var c int
			switch field {
			case "id":
				c = cmp.Compare(a.ID, b.ID)
			case "updated_date":
				c = a.UpdatedDate.Compare(b.UpdatedDate)
			case "name":
				c = cmp.Compare(a.Name, b.Name)
			case "status":
				c = cmp.Compare(a.Status, b.Status)
			case "project_id":
				c = cmp.Compare(a.ProjectID, b.ProjectID)
			}
			if strings.HasPrefix(k, "-") {
				c = -c
			}
			if c != 0 {
				return c
			}
		}
		return cmp.Compare(b.ID, a.ID)
	})
	return nil
}

// match evaluates the subset of JSON Logic CVAT's JsonLogicFilter accepts:
// and, or, !, comparisons, and in (list membership or substring).
func (s *Server) match(rule any, t *Task) (bool, error) {
	m, ok := rule.(map[string]any)
	if !ok || len(m) != 1 {
		return false, fmt.Errorf("invalid filter rule %v", rule)
	}
	for op, raw := range m {
		args, _ := raw.([]any)
		switch op {
		case "and", "or":
			for _, a := range args {
				ok, err := s.match(a, t)
				if err != nil {
					return false, err
				}
				if op == "or" && ok {
					return true, nil
				}
				if op == "and" && !ok {
					return false, nil
				}
			}
			return op == "and", nil
		case "!":
			if args == nil {
				args = []any{raw}
			}
			ok, err := s.match(args[0], t)
			return !ok, err
		case "==", "!=", ">", ">=", "<", "<=":
			if len(args) != 2 {
				return false, fmt.Errorf("%s needs two arguments", op)
			}
			a, err := s.value(args[0], t)
			if err != nil {
				return false, err
			}
			b, err := s.value(args[1], t)
			if err != nil {
				return false, err
			}
			c, comparable := compare(a, b)
			if !comparable {
				return op == "!=", nil
			}
			switch op {
			case "==":
				return c == 0, nil
			case "!=":
				return c != 0, nil
			case ">":
				return c > 0, nil
			case ">=":
				return c >= 0, nil
			case "<":
				return c < 0, nil
			default:
				return c <= 0, nil
			}
		case "in":
			if len(args) != 2 {
				return false, fmt.Errorf("in needs two arguments")
			}
			a, err := s.value(args[0], t)
			if err != nil {
				return false, err
			}
			if list, ok := args[1].([]any); ok {
				for _, e := range list {
					if c, ok := compare(a, e); ok && c == 0 {
						return true, nil
					}
				}
				return false, nil
			}
			b, err := s.value(args[1], t)
			if err != nil {
				return false, err
			}
			as, _ := a.(string)
			bs, _ := b.(string)
			return strings.Contains(strings.ToLower(bs), strings.ToLower(as)), nil
		}
		return false, fmt.Errorf("unsupported operator %q", op)
	}
	return false, nil
}

func (s *Server) value(v any, t *Task) (any, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return v, nil
	}
	name, _ := m["var"].(string)
	switch name {
	case "id":
		return float64(t.ID), nil
	case "project_id":
		if t.ProjectID == 0 {
			return nil, nil
		}
		return float64(t.ProjectID), nil
	case "name":
		return t.Name, nil
	case "status":
		return t.Status, nil
	case "mode":
		return t.Mode, nil
	case "subset":
		return t.Subset, nil
	case "dimension":
		return "2d", nil
	case "owner":
		return userName, nil
	case "project_name":
		if p, ok := s.projects[t.ProjectID]; ok {
			return p.Name, nil
		}
		return nil, nil
	case "updated_date":
		return t.UpdatedDate, nil
	}
	return nil, fmt.Errorf("unsupported filter field %q", name)
}

// compare orders two JSON Logic operands; dates compare with date strings.
func compare(a, b any) (int, bool) {
	if at, ok := a.(time.Time); ok {
		bs, ok := b.(string)
		if !ok {
			return 0, false
		}
		bt, err := time.Parse(time.RFC3339Nano, bs)
		if err != nil {
			return 0, false
		}
		return at.Compare(bt), true
	}
	if _, ok := b.(time.Time); ok {
		c, ok := compare(b, a)
		return -c, ok
	}
	switch av := a.(type) {
	case float64:
		bv, ok := b.(float64)
		return cmp.Compare(av, bv), ok
	case string:
		bv, ok := b.(string)
		return cmp.Compare(av, bv), ok
	}
	return 0, false
}

// paginate answers like DRF's PageNumberPagination as CVAT configures it:
// page and page_size (default 10, "all" for everything, no cap), absolute
// next/previous links with the query sorted, 404 "Invalid page." past the end.
func (s *Server) paginate(w http.ResponseWriter, r *http.Request, items []any) {
	if items == nil {
		items = []any{}
	}
	q := r.URL.Query()
	size := 10
	if ps := q.Get("page_size"); ps == "all" {
		size = max(len(items), 1)
	} else if n, err := strconv.Atoi(ps); err == nil && n > 0 {
		size = n
	}
	pages := max((len(items)+size-1)/size, 1)
	page := 1
	if p := q.Get("page"); p == "last" {
		page = pages
	} else if p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > pages {
			writeJSON(w, http.StatusNotFound, map[string]string{"detail": "Invalid page."})
			return
		}
		page = n
	}
	link := func(n int) *string {
		v := r.URL.Query()
		if n == 1 {
			v.Del("page")
		} else {
			v.Set("page", strconv.Itoa(n))
		}
		u := s.base(r) + r.URL.Path
		if enc := v.Encode(); enc != "" {
			u += "?" + enc
		}
		return &u
	}
	var next, prev *string
	if page < pages {
		next = link(page + 1)
	}
	if page > 1 {
		prev = link(page - 1)
	}
	lo := (page - 1) * size
	hi := min(lo+size, len(items))
	writeJSON(w, http.StatusOK, ordered{{"count", len(items)}, {"next", next}, {"previous", prev}, {"results", items[lo:hi]}})
}
