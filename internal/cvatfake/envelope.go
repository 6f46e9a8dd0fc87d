package cvatfake

import "slices"

// This file builds webhook bodies the way each CVAT release does. The
// envelope (which keys, in which order) changed in 2.4.2, 2.44.0, 2.73.0 and
// after 2.73.0 (cvat-ai/cvat#11104); see VERSIONS.md §1.3 and the comments
// on each builder for the source read.

// at reports whether the impersonated release is major.minor.patch or later.
// Every version rule of the webhook side goes through it.
func (s *Server) at(major, minor, patch int) bool {
	v := s.ver
	if v.major != major {
		return v.major > major
	}
	if v.minor != minor {
		return v.minor > minor
	}
	return v.patch >= patch
}

// Release boundaries of the webhook side.
func (s *Server) restOnly() bool { return !s.at(2, 4, 2) } // 2.3–2.4.1: events only from REST calls (engine/mixins.py)

// post11104 is the shape after cvat-ai/cvat#11104 (no before_update, no
// changes). Its first release is not pinned: the fake takes every release
// after 2.73 to have it.
func (s *Server) post11104() bool { return s.at(2, 74, 0) }

// hookSnap is a webhook as CVAT selected it for an event: up to 2.64 the
// whole webhook object travels with the queued job (target and secret as
// they were then); from 2.65 only its id does, and the worker reads the
// webhook again.
type hookSnap struct {
	id     int64
	target string
	secret string
}

// selectHooks is CVAT's select_webhooks: the active webhooks subscribed to
// event, first the organization's (forOrg), then the project's (forProject).
// In 2.3.0 a project webhook is selected only when its organization (the one
// of the request that created it) is the resource's. The caller holds s.mu.
func (s *Server) selectHooks(event, org string, projectID int64, forOrg, forProject bool) []hookSnap {
	var out []hookSnap
	ids := s.hookIDs()
	for _, id := range ids {
		h := s.hooks[id]
		if forOrg && org != "" && h.typ == "organization" && h.org == org && h.isActive && slices.Contains(h.events, event) {
			out = append(out, h.snap())
		}
	}
	for _, id := range ids {
		h := s.hooks[id]
		if forProject && projectID != 0 && h.typ == "project" && h.projectID == projectID && h.isActive &&
			slices.Contains(h.events, event) && (s.at(2, 4, 0) || h.org == org) {
			out = append(out, h.snap())
		}
	}
	return out
}

func (h *webhook) snap() hookSnap { return hookSnap{h.id, h.targetURL, h.secret} }

// fieldChange is one field an update changed.
type fieldChange struct {
	name     string
	from, to any
}

// update describes a saved resource for updateEvent.
type update struct {
	resource  string
	projectID int64
	org       string
	obj       any
	// diff is the read serializer's diff (serializer field names, values
	// as serialized): before_update from 2.4.2 to 2.72.
	diff []fieldChange
	// model is the diff of model attributes (raw values): before_update
	// and changes in 2.73.0. nil: the same names and values as diff.
	model []fieldChange
	// patch holds the keys of a REST PATCH body with their old values:
	// before_update in 2.3–2.4.1. nil: not a REST PATCH, which fires no
	// webhook there.
	patch ordered
	// transfer marks the update half of an organization transfer
	// (2.44+), whose bodies are built differently up to 2.72.
	transfer bool
}

func befores(cs []fieldChange) ordered {
	o := ordered{}
	for _, c := range cs {
		o = append(o, pair{c.name, c.from})
	}
	return o
}

// updateEvent builds update:<resource> as this release would, or reports
// that it sends none. to are the webhooks CVAT selected.
func (s *Server) updateEvent(u update, to []hookSnap) (Event, bool) {
	name := "update:" + u.resource
	sender := s.sender(s.publicBase())
	var build func(int64) ordered
	switch {
	case s.restOnly():
		// signals.py update @2.3.0/@2.4.1: data = {event, <res>,
		// before_update}, then webhook_id, then payload() adds sender.
		if u.patch == nil {
			return Event{}, false
		}
		build = func(id int64) ordered {
			return ordered{{"event", name}, {u.resource, u.obj}, {"before_update", u.patch}, {"webhook_id", id}, {"sender", sender}}
		}
	case !s.at(2, 44, 0):
		// signals.py post_save @2.4.2, @2.11.2: {event, <res>, sender,
		// [before_update]}, webhook_id added per webhook. 2.4.2–2.11.1 drop
		// an update whose diff is empty; 2.11.2+ send it without the key.
		if len(u.diff) == 0 && !s.at(2, 11, 2) {
			return Event{}, false
		}
		build = func(id int64) ordered {
			o := ordered{{"event", name}, {u.resource, u.obj}, {"sender", sender}}
			if len(u.diff) > 0 {
				o = append(o, pair{"before_update", befores(u.diff)})
			}
			return append(o, pair{"webhook_id", id})
		}
	case !s.at(2, 73, 0):
		// signals.py post_save @2.44.0, @2.64.0: {<res>, sender, event,
		// [before_update], webhook_id}; a transfer's bodies are
		// {**{<res>, sender, [before_update]}, webhook_id, event}.
		build = func(id int64) ordered {
			o := ordered{{u.resource, u.obj}, {"sender", sender}}
			if !u.transfer {
				o = append(o, pair{"event", name})
			}
			if len(u.diff) > 0 {
				o = append(o, pair{"before_update", befores(u.diff)})
			}
			o = append(o, pair{"webhook_id", id})
			if u.transfer {
				o = append(o, pair{"event", name})
			}
			return o
		}
	case !s.post11104():
		// 2.73.0: {event, webhook_id, <res>, sender, before_update,
		// changes}, both always present, keyed by model attribute names
		// (payloads/v2.73.0/update_task.json).
		cs := u.model
		if cs == nil {
			cs = u.diff
		}
		build = func(id int64) ordered {
			changes := ordered{}
			for _, c := range cs {
				changes = append(changes, pair{c.name, ordered{{"from", c.from}, {"to", c.to}}})
			}
			return ordered{{"event", name}, {"webhook_id", id}, {u.resource, u.obj}, {"sender", sender},
				{"before_update", befores(cs)}, {"changes", changes}}
		}
	default:
		// cvat-ai/cvat services.py trigger_resource_saved_webhooks after
		// #11104: {event, webhook_id, <res>, sender}.
		build = func(id int64) ordered {
			return ordered{{"event", name}, {"webhook_id", id}, {u.resource, u.obj}, {"sender", sender}}
		}
	}
	return s.event(name, u.projectID, u.org, build, to), true
}

// createEvent builds create:<resource>. transfer marks the create half of
// an organization transfer.
func (s *Server) createEvent(resource string, projectID int64, org string, obj any, transfer bool, to []hookSnap) Event {
	name := "create:" + resource
	sender := s.sender(s.publicBase())
	build := func(id int64) ordered {
		switch {
		case s.restOnly():
			return ordered{{"event", name}, {resource, obj}, {"webhook_id", id}, {"sender", sender}}
		case !s.at(2, 44, 0):
			return ordered{{"event", name}, {resource, obj}, {"sender", sender}, {"webhook_id", id}}
		case !s.at(2, 73, 0) && transfer:
			return ordered{{resource, obj}, {"sender", sender}, {"webhook_id", id}, {"event", name}}
		case !s.at(2, 73, 0):
			return ordered{{resource, obj}, {"sender", sender}, {"event", name}, {"webhook_id", id}}
		}
		return ordered{{"event", name}, {"webhook_id", id}, {resource, obj}, {"sender", sender}}
	}
	return s.event(name, projectID, org, build, to)
}

// deleteEvent builds delete:<resource> from the snapshot taken before the
// deletion. transfer marks the delete half of an organization transfer,
// which is built like a save (2.44+), not like a deletion.
func (s *Server) deleteEvent(resource string, projectID int64, org string, obj any, transfer bool, to []hookSnap) Event {
	name := "delete:" + resource
	sender := s.sender(s.publicBase())
	build := func(id int64) ordered {
		switch {
		case s.restOnly():
			return ordered{{"event", name}, {resource, obj}, {"webhook_id", id}, {"sender", sender}}
		case transfer && !s.at(2, 73, 0):
			return ordered{{resource, obj}, {"sender", sender}, {"webhook_id", id}, {"event", name}}
		case transfer:
			return ordered{{"event", name}, {"webhook_id", id}, {resource, obj}, {"sender", sender}}
		}
		return ordered{{"event", name}, {resource, obj}, {"sender", sender}, {"webhook_id", id}}
	}
	return s.event(name, projectID, org, build, to)
}

// event renders Body for the first selected webhook (webhook_id 1 when none
// was selected, so tests can deliver it by hand).
func (s *Server) event(name string, projectID int64, org string, build func(int64) ordered, to []hookSnap) Event {
	ev := Event{Name: name, ProjectID: projectID, Org: org, build: build, to: to}
	id := int64(1)
	if len(to) > 0 {
		id = to[0].id
	}
	ev.render(id)
	return ev
}

// pingBody is the ping payload, the same on every release:
// {event, webhook, sender} (signals.py ping @2.3.0, services.py @2.73.0).
func (s *Server) pingBody(h *webhook, base string) ordered {
	return ordered{{"event", "ping"}, {"webhook", s.webhookJSON(h, base)}, {"sender", s.sender(base)}}
}
