package cvatfake

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
