package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// Enqueuer stores work in the inbox.
type Enqueuer interface {
	EnqueueEvent(ctx context.Context, e task.Event) error
}

// Pass kinds.
const (
	passFull        = "full"
	passIncremental = "incremental"
)

// The names of the events the service enqueues for itself (the trigger's
// event in their notices), beside CVAT's own and "reconcile"/"backfill".
const (
	EventProject        = "project"         // a task behind, found after a project changed
	EventProjectDeleted = "project-deleted" // a task of a deleted project, checked for its deletion
)

// Since settings (CVAT_SYNC_SYNC_SINCE) besides a time or a duration.
const (
	SinceFirstStart = "first-start"
	SinceAll        = "all"
)

// ConvergerConfig configures a Converger.
type ConvergerConfig struct {
	CVAT    CVAT
	Records Records
	Queue   Enqueuer
	Formats []string
	Policy  task.Policy
	// Interval between passes; 0 turns convergence off (the webhooks are
	// then the only way in).
	Interval time.Duration
	// FullInterval is the most time between full passes (which list every
	// task and find deletions); the passes between are incremental (tasks
	// CVAT changed since the last pass). The first pass is always full.
	FullInterval time.Duration
	// Since is the scope setting: SinceFirstStart, SinceAll, an RFC 3339
	// time or a Go duration before now. Tasks last changed before it are not
	// exported unless they are in the record (backfilled).
	Since string
	// MaxDeleteFraction: a full pass that finds more than this share of the
	// recorded tasks gone (and more than deleteFloor) announces none of
	// them; 1 lifts the guard.
	MaxDeleteFraction float64
	// Margin widens each incremental window backwards on CVAT's clock, for
	// transactions that commit after the previous pass listed; default 2m.
	Margin time.Duration
	// RequeueAfter: a state enqueued less than this ago is not enqueued
	// again by a pass; default 30m.
	RequeueAfter time.Duration
	// PageSize of the task listings; default listPageSize.
	PageSize int
	// ConfirmDelay separates the two reads that confirm a project is gone;
	// default 2s.
	ConfirmDelay time.Duration
	// Offset, if set, is told CVAT's clock minus ours at every pass.
	Offset  func(time.Duration)
	Metrics *Metrics
	Logger  *slog.Logger
	Now     func() time.Time
}

// deleteFloor: the deletion guard applies only above this many deletions.
const deleteFloor = 10

// listPageSize is the page size of a pass's task listing: CVAT sets no
// maximum, and fewer, larger pages make a pass over 10,000 tasks 20 calls.
const listPageSize = 500

// Converger compares CVAT's tasks (the desired state) with the bucket's
// record (what was exported and announced) and enqueues the difference:
// states not yet announced, failed states whose backoff ended, and tasks
// gone from CVAT whose deletion was not announced. It is what makes the
// service correct; webhooks only make it fast.
type Converger struct {
	cfg ConvergerConfig
	m   *Metrics

	mu       sync.Mutex
	known    map[int64]task.State // CVAT's states as last listed
	behind   map[int64]time.Time  // tasks in scope behind CVAT, by the updated_date of their state
	enqueued map[int64]enqueuedState
	offset   time.Duration // CVAT's clock minus ours, at the last pass
	since    time.Time
	lastFull time.Time // our clock
	passes   int
}

type enqueuedState struct {
	updated time.Time
	at      time.Time
}

// NewConverger validates cfg.
func NewConverger(cfg ConvergerConfig) (*Converger, error) {
	if err := missing("converger", map[string]bool{"CVAT": cfg.CVAT == nil, "Records": cfg.Records == nil,
		"Queue": cfg.Queue == nil, "Formats": len(cfg.Formats) == 0}); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if _, err := ParseSince(cfg.Since, cfg.Now()); err != nil {
		return nil, err
	}
	if cfg.Since == "" {
		cfg.Since = SinceFirstStart
	}
	if cfg.Policy == "" {
		cfg.Policy = task.PolicyUpdate
	}
	if cfg.MaxDeleteFraction <= 0 || cfg.MaxDeleteFraction > 1 {
		return nil, fmt.Errorf("pipeline: MaxDeleteFraction %v must be in (0, 1]", cfg.MaxDeleteFraction)
	}
	if cfg.Interval > 0 && cfg.FullInterval < cfg.Interval {
		cfg.FullInterval = cfg.Interval
	}
	if cfg.Margin <= 0 {
		cfg.Margin = 2 * time.Minute
	}
	if cfg.RequeueAfter <= 0 {
		cfg.RequeueAfter = 30 * time.Minute
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = listPageSize
	}
	if cfg.ConfirmDelay <= 0 {
		cfg.ConfirmDelay = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Offset == nil {
		cfg.Offset = func(time.Duration) {}
	}
	m := cfg.Metrics
	if m == nil {
		var err error
		if m, err = NewMetrics(nil); err != nil {
			return nil, err
		}
	}
	c := &Converger{cfg: cfg, m: m, known: map[int64]task.State{}, behind: map[int64]time.Time{}, enqueued: map[int64]enqueuedState{}}
	behind := c.behindStats
	m.behindCount.Store(&behind)
	return c, nil
}

// ParseSince checks a since setting; for a time or a duration it returns
// the time it means at now (zero for SinceAll and SinceFirstStart).
func ParseSince(s string, now time.Time) (time.Time, error) {
	switch s {
	case "", SinceFirstStart, SinceAll:
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("since %q: want %s, %s, an RFC 3339 time (2026-05-01T00:00:00Z) or a duration before now (720h)", s, SinceFirstStart, SinceAll)
}

// Run makes passes until ctx is done: a full pass at once, then one every
// Interval (full when FullInterval has passed since the last full one). A
// failed pass is retried sooner, backing off up to Interval.
func (c *Converger) Run(ctx context.Context) {
	retry := 5 * time.Second
	if c.cfg.Interval <= 0 {
		// No passes; the scope is still fixed at the first start, so that
		// turning convergence on later exports what changed since then.
		for {
			err := c.fixScope(ctx)
			if err == nil || ctx.Err() != nil {
				return
			}
			c.cfg.Logger.Warn("could not fix the convergence scope yet", "retry_in", retry.String(), "error", err.Error())
			if sleepCtx(ctx, retry) != nil {
				return
			}
			retry = min(2*retry, 5*time.Minute)
		}
	}
	for {
		wait := c.cfg.Interval
		if _, err := c.Pass(ctx, c.fullDue()); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.cfg.Logger.Warn("convergence pass failed; retrying", "retry_in", retry.String(), "error", err.Error())
			wait, retry = min(retry, c.cfg.Interval), min(2*retry, c.cfg.Interval)
		} else {
			retry = 5 * time.Second
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return
		}
	}
}

func (c *Converger) fullDue() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastFull.IsZero() || c.cfg.Now().Sub(c.lastFull) >= c.cfg.FullInterval
}

// PassResult says what one pass found.
type PassResult struct {
	Kind     string
	Listed   int  // tasks CVAT listed
	Behind   int  // tasks in scope not current
	Failing  int  // of them, waiting for their retry backoff
	Enqueued int  // tasks enqueued (behind, retry)
	Deleted  int  // gone tasks enqueued for their deletion check
	Blocked  bool // deletions refused by the guard
	Partial  bool // some task-list pages kept failing
}

// Pass makes one convergence pass: full lists every task and finds
// deletions; incremental lists what CVAT changed since the last pass.
func (c *Converger) Pass(ctx context.Context, full bool) (PassResult, error) {
	kind := passIncremental
	if full {
		kind = passFull
	}
	res, err := c.pass(ctx, full)
	res.Kind = kind
	outcome := "ok"
	switch {
	case err != nil:
		outcome = "failed"
	case res.Partial:
		outcome = "partial"
	}
	c.m.passes.WithLabelValues(kind, outcome).Inc()
	if err != nil {
		return res, fmt.Errorf("%s convergence pass: %w", kind, err)
	}
	c.m.passSuccess.WithLabelValues(kind).SetToCurrentTime()
	return res, nil
}

func (c *Converger) pass(ctx context.Context, full bool) (PassResult, error) {
	var res PassResult
	started := c.cfg.Now()
	clock, err := c.cfg.CVAT.Clock(ctx)
	if err != nil {
		return res, err
	}
	cur, err := c.cursor(ctx, clock)
	if err != nil {
		return res, err
	}
	c.mu.Lock()
	if len(c.known) == 0 {
		full = true // nothing known yet: an incremental pass could not judge
	}
	c.offset = clock.Sub(c.cfg.Now())
	c.cfg.Offset(c.offset)
	c.mu.Unlock()

	recs := map[int64]sink.Record{}
	var lastAnnounced time.Time
	if err := c.cfg.Records.List(ctx, func(r sink.Record) error {
		recs[r.TaskID] = r
		if t := r.LastAnnounced(); t.After(lastAnnounced) {
			lastAnnounced = t
		}
		return nil
	}); err != nil {
		return res, err
	}
	c.m.seeLastSuccess(lastAnnounced)

	filter := cvatapi.TaskFilter{PageSize: c.cfg.PageSize}
	if !full && !cur.Watermark.IsZero() {
		filter.UpdatedSince = cur.Watermark.Add(-c.cfg.Margin)
	}
	listed := map[int64]task.State{}
	listErr := c.cfg.CVAT.ListTasks(ctx, filter, func(t cvatapi.Task) error {
		listed[t.ID] = stateOf(t)
		return nil
	})
	res.Listed = len(listed)
	if listErr != nil && !errors.Is(listErr, cvatapi.ErrIncompleteListing) {
		return res, listErr
	}
	res.Partial = listErr != nil
	if res.Partial {
		c.cfg.Logger.Warn("task listing incomplete; the tasks of the other pages converge, deletions wait for a complete listing", "error", listErr.Error())
	}

	c.mu.Lock()
	if full && !res.Partial {
		c.known = listed
	} else {
		for id, st := range listed {
			c.known[id] = st
		}
	}
	known := make([]task.State, 0, len(c.known))
	for _, st := range c.known {
		known = append(known, st)
	}
	c.mu.Unlock()

	// What is behind.
	now := c.cfg.Now()
	behind := map[int64]time.Time{}
	live := 0
	for _, r := range recs {
		if r.Exported() && r.Deleted == nil {
			live++
		}
	}
	for _, st := range known {
		rec := recs[st.ID]
		if !c.behindState(st, rec, cur.Since) {
			continue
		}
		behind[st.ID] = st.UpdatedDate
		res.Behind++
		reason := reasonBehind
		if f := rec.Failure; f != nil && f.UpdatedDate.Equal(st.UpdatedDate) {
			if now.Before(f.Next) {
				res.Failing++
				continue
			}
			reason = reasonRetry
		} else if c.recentlyEnqueued(st, now) {
			continue
		}
		if err := c.enqueue(ctx, task.Event{Name: string(task.SourceReconcile), Resource: task.ResourceTask, Action: task.ActionUpdate,
			TaskID: st.ID, ProjectID: st.ProjectID, OrganizationID: st.OrganizationID, Status: st.Status,
			UpdatedDate: st.UpdatedDate, ReceivedAt: now.UTC(), Source: task.SourceReconcile}, reason); err != nil {
			return res, err
		}
		res.Enqueued++
	}

	// What is gone: only a complete full listing can say, and only of the
	// exported tasks of the organization it lists (a backfill of another
	// organization's tasks leaves records this listing never shows).
	if full && !res.Partial {
		orgs := map[int64]bool{}
		for _, st := range listed {
			orgs[st.OrganizationID] = true
		}
		var gone []sink.Record
		for id, r := range recs {
			if _, ok := listed[id]; ok || !r.Exported() || r.Deleted != nil {
				continue
			}
			if len(orgs) > 0 && !orgs[r.Task.OrganizationID] {
				continue
			}
			gone = append(gone, r)
		}
		// Tasks of a project CVAT confirms deleted went with it (a project
		// webhook hears none of the cascade): their deletion is explained,
		// and the guard, which is for listings that lost sight of tasks,
		// does not hold them back.
		explained, unexplained, err := c.projectsGone(ctx, gone)
		if err != nil {
			return res, err
		}
		blocked := len(unexplained) > deleteFloor && float64(len(unexplained)) > c.cfg.MaxDeleteFraction*float64(live)
		res.Blocked = blocked
		announce := explained
		if blocked {
			c.m.blocked.Set(1)
			c.cfg.Logger.Error("convergence refuses to announce deletions: CVAT no longer lists most recorded tasks; "+
				"check the CVAT credentials and organization (CVAT_SYNC_CVAT_TOKEN, CVAT_SYNC_CVAT_ORG); "+
				"if the deletions are real, raise CVAT_SYNC_MAX_DELETE_FRACTION (1 lifts the guard)",
				"gone", len(unexplained), "recorded", live, "max_delete_fraction", c.cfg.MaxDeleteFraction)
		} else {
			c.m.blocked.Set(0)
			announce = append(announce, unexplained...)
		}
		for _, r := range announce {
			if err := c.enqueue(ctx, task.Event{Name: string(task.SourceReconcile), Resource: task.ResourceTask, Action: task.ActionDelete,
				TaskID: r.TaskID, ProjectID: r.Task.ProjectID, OrganizationID: r.Task.OrganizationID, TaskName: r.Task.Name,
				UpdatedDate: r.Task.UpdatedDate, ReceivedAt: now.UTC(), Source: task.SourceReconcile}, reasonDeleted); err != nil {
				return res, err
			}
			res.Deleted++
		}
	}

	c.mu.Lock()
	c.behind = behind
	if full && !res.Partial {
		c.lastFull = started
	}
	c.passes++
	for id, e := range c.enqueued {
		if now.Sub(e.at) >= c.cfg.RequeueAfter {
			delete(c.enqueued, id)
		}
	}
	c.mu.Unlock()
	c.m.failing.Set(float64(res.Failing))
	c.m.recorded.Set(float64(live))

	// A partial pass keeps the watermark: the changes on the pages it
	// skipped must stay inside the next incremental window.
	if !res.Partial {
		cur.Watermark = clock
		if full {
			cur.LastFull = clock
		}
	}
	if _, err := c.cfg.Records.SaveCursor(ctx, cur); err != nil && !errors.Is(err, sink.ErrConflict) {
		return res, err
	}
	c.cfg.Logger.Info("convergence pass", "kind", map[bool]string{true: passFull, false: passIncremental}[full],
		"listed", res.Listed, "behind", res.Behind, "failing", res.Failing, "enqueued", res.Enqueued,
		"deleted", res.Deleted, "blocked", res.Blocked, "partial", res.Partial, "took", c.cfg.Now().Sub(started).String())
	return res, nil
}

// fixScope resolves and stores the scope's start (see cursor).
func (c *Converger) fixScope(ctx context.Context) error {
	clock, err := c.cfg.CVAT.Clock(ctx)
	if err != nil {
		return err
	}
	_, err = c.cursor(ctx, clock)
	return err
}

// cursor reads the persisted progress and resolves the scope's start: on
// the first start with SinceFirstStart it is CVAT's time now, stored so a
// restart or a rollout keeps it.
func (c *Converger) cursor(ctx context.Context, clock time.Time) (sink.Cursor, error) {
	cur, err := c.cfg.Records.Cursor(ctx)
	if err != nil {
		return cur, err
	}
	defer func() {
		c.mu.Lock()
		c.since = cur.Since
		c.mu.Unlock()
	}()
	if cur.SinceSetting == c.cfg.Since && (c.cfg.Since != SinceFirstStart || !cur.Since.IsZero()) {
		return cur, nil
	}
	prev := cur.SinceSetting
	switch c.cfg.Since {
	case SinceFirstStart:
		if cur.Since.IsZero() || prev != SinceFirstStart {
			cur.Since = clock.UTC()
		}
	case SinceAll:
		cur.Since = time.Time{}
	default:
		if cur.Since, err = ParseSince(c.cfg.Since, clock); err != nil {
			return cur, err
		}
	}
	cur.SinceSetting = c.cfg.Since
	cur, err = c.cfg.Records.SaveCursor(ctx, cur)
	if errors.Is(err, sink.ErrConflict) {
		return c.cfg.Records.Cursor(ctx) // another replica resolved it first
	}
	if err != nil {
		return cur, err
	}
	c.cfg.Logger.Info("convergence scope set", "since", cur.Since, "setting", c.cfg.Since, "previous_setting", prev)
	return cur, nil
}

// behindState reports whether task st is in scope and its state not yet
// done: not announced in every format, or, under the completed policy, not
// yet looked at (a state the policy checked and found not due is done).
// Scope: tasks in the record, and tasks changed since the scope's start.
func (c *Converger) behindState(st task.State, rec sink.Record, since time.Time) bool {
	if !rec.Exists() && !since.IsZero() && st.UpdatedDate.Before(since) {
		return false
	}
	if rec.Current(c.cfg.Formats, st.UpdatedDate) && rec.Deleted == nil {
		return false
	}
	return c.cfg.Policy != task.PolicyCompleted || !rec.Checked.Equal(st.UpdatedDate)
}

func (c *Converger) recentlyEnqueued(st task.State, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.enqueued[st.ID]
	return ok && e.updated.Equal(st.UpdatedDate) && now.Sub(e.at) < c.cfg.RequeueAfter
}

func (c *Converger) enqueue(ctx context.Context, e task.Event, reason string) error {
	if err := c.cfg.Queue.EnqueueEvent(ctx, e); err != nil {
		return err
	}
	c.m.enqueued.WithLabelValues(reason).Inc()
	if e.Action != task.ActionDelete {
		c.mu.Lock()
		c.enqueued[e.TaskID] = enqueuedState{updated: e.UpdatedDate, at: c.cfg.Now()}
		c.mu.Unlock()
	}
	return nil
}

// Synced takes the result of a sync (the worker calls it after each), so
// the behind gauges move between passes: a state now announced or checked
// is no longer behind, a task gone is no longer known.
func (c *Converger) Synced(res Result) {
	st := res.State
	c.mu.Lock()
	defer c.mu.Unlock()
	switch res.Outcome {
	case OutcomeDeleted, OutcomeGone, OutcomeHidden:
		if st.ID != 0 {
			delete(c.known, st.ID)
			delete(c.behind, st.ID)
			delete(c.enqueued, st.ID)
		}
		return
	case OutcomeFailed, "":
		return
	}
	if u, ok := c.behind[st.ID]; ok && !u.After(st.UpdatedDate) {
		delete(c.behind, st.ID)
	}
	delete(c.enqueued, st.ID)
	if k, ok := c.known[st.ID]; !ok || !k.UpdatedDate.After(st.UpdatedDate) {
		c.known[st.ID] = st
	}
}

// behindStats are the tasks behind and the age of the oldest state, on
// CVAT's clock.
func (c *Converger) behindStats() (int, float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var oldest time.Time
	for _, u := range c.behind {
		if oldest.IsZero() || u.Before(oldest) {
			oldest = u
		}
	}
	if oldest.IsZero() {
		return len(c.behind), 0
	}
	return len(c.behind), max(c.cfg.Now().Add(c.offset).Sub(oldest).Seconds(), 0)
}

// projectsGone splits gone records into those of projects CVAT confirms
// deleted (a 404, read twice) and the rest.
func (c *Converger) projectsGone(ctx context.Context, gone []sink.Record) (explained, unexplained []sink.Record, err error) {
	byProject := map[int64][]sink.Record{}
	for _, r := range gone {
		if r.Task.ProjectID == 0 {
			unexplained = append(unexplained, r)
			continue
		}
		byProject[r.Task.ProjectID] = append(byProject[r.Task.ProjectID], r)
	}
	for id, recs := range byProject {
		deleted, err := c.projectDeleted(ctx, id)
		if err != nil {
			return nil, nil, err
		}
		if deleted {
			explained = append(explained, recs...)
		} else {
			unexplained = append(unexplained, recs...)
		}
	}
	return explained, unexplained, nil
}

// projectDeleted reports whether CVAT answers project id with its own 404,
// twice (the second read after a pause, like a task's).
func (c *Converger) projectDeleted(ctx context.Context, id int64) (bool, error) {
	for i := range 2 {
		_, err := c.cfg.CVAT.Project(ctx, id)
		switch {
		case err == nil, errors.Is(err, cvatapi.ErrForbidden):
			return false, nil
		case !errors.Is(err, cvatapi.ErrNotFound):
			return false, err
		}
		if i == 0 {
			if err := sleepCtx(ctx, c.cfg.ConfirmDelay); err != nil {
				return false, err
			}
		}
	}
	return true, nil
}

// ProjectChanged enqueues the project's tasks that are behind: a project
// event that names no task (its tasks' own events, when they came, cover
// it).
func (c *Converger) ProjectChanged(ctx context.Context, projectID int64, trig task.Trigger) (int, error) {
	recs := map[int64]sink.Record{}
	if err := c.cfg.Records.List(ctx, func(r sink.Record) error {
		if r.Task.ProjectID == projectID {
			recs[r.TaskID] = r
		}
		return nil
	}); err != nil {
		return 0, err
	}
	c.mu.Lock()
	since, unread := c.since, c.since.IsZero()
	c.mu.Unlock()
	if unread && c.cfg.Since != SinceAll {
		// The scope is not read yet (CVAT was unreachable at start): read it
		// now rather than export the project's history.
		if err := c.fixScope(ctx); err != nil {
			return 0, err
		}
		c.mu.Lock()
		since = c.since
		c.mu.Unlock()
	}
	n := 0
	now := c.cfg.Now()
	err := c.cfg.CVAT.ListTasks(ctx, cvatapi.TaskFilter{ProjectID: projectID, PageSize: c.cfg.PageSize}, func(t cvatapi.Task) error {
		st := stateOf(t)
		rec := recs[st.ID]
		if !c.behindState(st, rec, since) {
			return nil
		}
		if f := rec.Failure; f != nil && f.UpdatedDate.Equal(st.UpdatedDate) && now.Before(f.Next) {
			return nil // its backoff is convergence's to end
		}
		n++
		return c.enqueue(ctx, task.Event{Name: EventProject, Resource: task.ResourceTask, Action: task.ActionUpdate,
			TaskID: st.ID, ProjectID: projectID, OrganizationID: st.OrganizationID, Status: st.Status, UpdatedDate: st.UpdatedDate,
			WebhookID: trig.WebhookID, Sender: trig.Sender, ReceivedAt: c.cfg.Now().UTC(), Source: task.SourceWebhook}, reasonBehind)
	})
	return n, err
}

// ProjectDeleted handles a project's deletion: once CVAT confirms the
// project is gone, each recorded task of it is enqueued for its deletion
// check (a project webhook hears no per-task deletes of the cascade). A
// project that still exists is a change.
func (c *Converger) ProjectDeleted(ctx context.Context, projectID int64, trig task.Trigger) (int, error) {
	deleted, err := c.projectDeleted(ctx, projectID)
	if err != nil {
		return 0, err
	}
	if !deleted {
		return c.ProjectChanged(ctx, projectID, trig)
	}
	var recs []sink.Record
	if err := c.cfg.Records.List(ctx, func(r sink.Record) error {
		if r.Task.ProjectID == projectID && r.Exported() && r.Deleted == nil {
			recs = append(recs, r)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	for _, r := range recs {
		if err := c.enqueue(ctx, task.Event{Name: EventProjectDeleted, Resource: task.ResourceTask, Action: task.ActionDelete,
			TaskID: r.TaskID, ProjectID: projectID, OrganizationID: r.Task.OrganizationID, TaskName: r.Task.Name,
			UpdatedDate: r.Task.UpdatedDate, WebhookID: trig.WebhookID, Sender: trig.Sender,
			ReceivedAt: c.cfg.Now().UTC(), Source: task.SourceWebhook}, reasonDeleted); err != nil {
			return 0, err
		}
	}
	c.cfg.Logger.Info("project deleted in CVAT; its exported tasks are checked and announced as deleted", "project_id", projectID, "tasks", len(recs))
	return len(recs), nil
}

// describe is a short line about the converger's settings, for start-up.
func (c *Converger) describe() string {
	if c.cfg.Interval <= 0 {
		return "off (CVAT_SYNC_RECONCILE_INTERVAL=0): webhooks only"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "every %s (full every %s), since %s, deletion guard %.0f%%", c.cfg.Interval, c.cfg.FullInterval, c.cfg.Since, 100*c.cfg.MaxDeleteFraction)
	return b.String()
}
