package cvatfake

// RemoveProject deletes project id and its tasks and jobs from the fake
// without producing events (what a project webhook hears of the cascade
// from 2.4.2: none of the per-task deletes).
func (s *Server) RemoveProject(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.projects, id)
	for tid, t := range s.tasks {
		if t.ProjectID == id {
			delete(s.tasks, tid)
		}
	}
}

// HideTask makes task id invisible to the fake's credentials, as a
// permission change does: the listing omits it and a direct read answers
// 403.
func (s *Server) HideTask(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hidden == nil {
		s.hidden = map[int64]bool{}
	}
	s.hidden[id] = true
}
