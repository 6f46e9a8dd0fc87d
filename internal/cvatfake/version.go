package cvatfake

import "fmt"

type version struct{ major, minor, patch int }

func parseVersion(s string) (version, bool) {
	var v version
	n, _ := fmt.Sscanf(s, "%d.%d.%d", &v.major, &v.minor, &v.patch)
	return v, n >= 2
}

func (v version) atLeast(major, minor int) bool {
	return v.major > major || (v.major == major && v.minor >= minor)
}

// since reports v >= major.minor.patch, for the ranges that start at a patch
// release (2.10.1, 2.14.1, 2.14.3).
func (v version) since(major, minor, patch int) bool {
	if v.major != major {
		return v.major > major
	}
	if v.minor != minor {
		return v.minor > minor
	}
	return v.patch >= patch
}
