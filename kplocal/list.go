package kplocal

import (
	"cmp"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

const maxInt = math.MaxInt32

const whatList = "Keys could not be retrieved"

// listQuery is the parsed query of GET and HEAD /keys.
type listQuery struct {
	limit, offset int
	states        []int // nil: every state but destroyed
	extractable   *bool
	search        *searchSpec
	sort          []sortField
	filter        []func(*key, time.Time) bool
}

// parseListQuery parses the query of GET /keys (paged) or HEAD /keys.
func parseListQuery(c *call, paged bool) (listQuery, error) {
	query := c.r.URL.Query()
	var q listQuery
	var err error
	if paged {
		if q.limit, err = intParam(query, "limit", 200, 1, 5000, whatList); err != nil {
			return q, err
		}
		if q.offset, err = intParam(query, "offset", 0, 0, maxInt, whatList); err != nil {
			return q, err
		}
	}
	if v := query.Get("state"); v != "" {
		if q.states, err = parseStates(v); err != nil {
			return q, errInvalidQuery(whatList, "state", "a comma-separated list of key states (0, 1, 2, 3, 5)")
		}
	}
	if query.Has("extractable") {
		b, err := boolParam(query, "extractable", whatList)
		if err != nil {
			return q, err
		}
		q.extractable = &b
	}
	if v := query.Get("search"); v != "" {
		q.search = parseSearch(v)
	}
	if q.sort, err = parseSort(query.Get("sort")); err != nil {
		return q, err
	}
	if q.filter, err = parseFilter(query.Get("filter")); err != nil {
		return q, err
	}
	return q, nil
}

// selectKeys returns the keys matching q, sorted. The caller holds s.mu.
func (s *Server) selectKeys(q listQuery, c *call) []*key {
	ring := c.r.Header.Get("x-kms-key-ring")
	var out []*key
	for _, k := range s.keys {
		if k.Instance != c.inst.id {
			continue
		}
		if k.Deleted != nil && !c.now.Before(k.Deleted.Add(autoPurgeAfter)) {
			continue // purged automatically
		}
		st := k.stateAt(c.now)
		switch {
		case q.states == nil && st == stateDestroyed,
			q.states != nil && !slices.Contains(q.states, st),
			q.extractable != nil && k.Standard != *q.extractable,
			ring != "" && k.KeyRingID != ring,
			q.search != nil && !q.search.match(k):
			continue
		}
		if !slices.ContainsFunc(q.filter, func(f func(*key, time.Time) bool) bool { return !f(k, c.now) }) {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b *key) int {
		for _, f := range q.sort {
			if r := f.compare(a, b, c.now); r != 0 {
				if f.desc {
					return -r
				}
				return r
			}
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

func parseStates(v string) ([]int, error) {
	var states []int
	for part := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 || n > 5 || n == 4 {
			return nil, strconv.ErrSyntax
		}
		states = append(states, n)
	}
	return states, nil
}

// intParam parses an integer query parameter in [lo, hi].
func intParam(q url.Values, name string, def, lo, hi int, what string) (int, error) {
	if !q.Has(name) {
		return def, nil
	}
	n, err := strconv.Atoi(q.Get(name))
	if err != nil || n < lo || n > hi {
		return 0, errInvalidQuery(what, name, "an integer between "+strconv.Itoa(lo)+" and "+strconv.Itoa(hi)+" (inclusive)")
	}
	return n, nil
}

// boolParam parses an optional true/false query parameter.
func boolParam(q url.Values, name, what string) (bool, error) {
	switch q.Get(name) {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	}
	return false, errInvalidQuery(what, name, "true or false")
}

// searchSpec is a parsed search parameter:
// [not:][escape:|exact:][name:][alias:]term, in any order of the prefixes.
type searchSpec struct {
	term              string
	not, exact        bool
	byName, byAliases bool
}

func parseSearch(v string) *searchSpec {
	v = strings.TrimSuffix(v, ",") // the official Go client appends a comma
	sp := &searchSpec{}
	for done := false; !done; {
		switch {
		case strings.HasPrefix(v, "not:"):
			sp.not, v = true, v[len("not:"):]
		case strings.HasPrefix(v, "exact:"):
			sp.exact, v = true, v[len("exact:"):]
		case strings.HasPrefix(v, "name:"):
			sp.byName, v = true, v[len("name:"):]
		case strings.HasPrefix(v, "alias:"):
			sp.byAliases, v = true, v[len("alias:"):]
		case strings.HasPrefix(v, "escape:"):
			v, done = v[len("escape:"):], true // the rest is literal
		default:
			done = true
		}
	}
	if !sp.byName && !sp.byAliases {
		sp.byName, sp.byAliases = true, true
	}
	sp.term = v
	return sp
}

func (sp *searchSpec) match(k *key) bool {
	hit := func(s string) bool {
		if sp.exact {
			return s == sp.term
		}
		return strings.Contains(strings.ToLower(s), strings.ToLower(sp.term))
	}
	found := (sp.byName && hit(k.Name)) || (sp.byAliases && slices.ContainsFunc(k.Aliases, hit))
	return found != sp.not
}

// sortField is one field of the sort parameter.
type sortField struct {
	compare func(a, b *key, now time.Time) int
	desc    bool
}

// byNumber adapts a numeric key property to a comparison.
func byNumber(get func(*key, time.Time) int64) func(a, b *key, now time.Time) int {
	return func(a, b *key, now time.Time) int { return cmp.Compare(get(a, now), get(b, now)) }
}

// timeOrder orders absent dates first.
func timeOrder(t *time.Time) int64 {
	if t == nil {
		return math.MinInt64
	}
	return t.UnixNano()
}

func boolOrder(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// keyDates are the date fields that sort and filter accept.
var keyDates = map[string]func(*key) *time.Time{
	"creationDate":   func(k *key) *time.Time { return &k.Created },
	"lastUpdateDate": func(k *key) *time.Time { return k.Updated },
	"lastRotateDate": func(k *key) *time.Time { return k.Rotated },
	"deletionDate":   func(k *key) *time.Time { return k.Deleted },
	"expirationDate": func(k *key) *time.Time { return k.Expiration },
}

func parseSort(v string) ([]sortField, error) {
	if v == "" {
		return nil, nil
	}
	var fields []sortField
	for part := range strings.SplitSeq(v, ",") {
		f := sortField{desc: strings.HasPrefix(part, "-")}
		switch name := strings.TrimPrefix(part, "-"); name {
		case "id":
			f.compare = func(a, b *key, _ time.Time) int { return strings.Compare(a.ID, b.ID) }
		case "state":
			f.compare = byNumber(func(k *key, now time.Time) int64 { return int64(k.stateAt(now)) })
		case "extractable":
			f.compare = byNumber(func(k *key, _ time.Time) int64 { return boolOrder(k.Standard) })
		case "imported":
			f.compare = byNumber(func(k *key, _ time.Time) int64 { return boolOrder(k.Imported) })
		default:
			date, ok := keyDates[name]
			if !ok {
				return nil, errInvalidQuery(whatList, "sort",
					"a comma-separated list of id, state, extractable, imported, creationDate, lastUpdateDate, lastRotateDate, deletionDate, expirationDate, each optionally prefixed with '-'")
			}
			f.compare = byNumber(func(k *key, _ time.Time) int64 { return timeOrder(date(k)) })
		}
		fields = append(fields, f)
	}
	return fields, nil
}

// parseFilter parses the filter parameter: space-separated terms
// state=1,2 | extractable=true | DATE=[gt:|gte:|lt:|lte:]"RFC3339" | DATE=none.
func parseFilter(v string) ([]func(*key, time.Time) bool, error) {
	var preds []func(*key, time.Time) bool
	bad := func() error {
		return errInvalidQuery(whatList, "filter",
			`space-separated terms state=N[,N…], extractable=true|false or DATE=[gt:|gte:|lt:|lte:]"RFC 3339 date"|none`)
	}
	for _, term := range strings.Fields(v) {
		name, value, ok := strings.Cut(term, "=")
		if !ok {
			return nil, bad()
		}
		switch name {
		case "state":
			states, err := parseStates(value)
			if err != nil {
				return nil, bad()
			}
			preds = append(preds, func(k *key, now time.Time) bool { return slices.Contains(states, k.stateAt(now)) })
		case "extractable":
			b, err := strconv.ParseBool(value)
			if err != nil {
				return nil, bad()
			}
			preds = append(preds, func(k *key, _ time.Time) bool { return k.Standard == b })
		default:
			date, ok := keyDates[name]
			if !ok {
				return nil, bad()
			}
			if value == "none" {
				preds = append(preds, func(k *key, _ time.Time) bool { return date(k) == nil })
				continue
			}
			opName, quoted, hasOp := strings.Cut(value, ":")
			if !hasOp || strings.HasPrefix(value, `"`) {
				opName, quoted = "eq", value
			}
			raw, err := strconv.Unquote(quoted)
			if err != nil {
				return nil, bad()
			}
			ref, err := time.Parse(time.RFC3339, raw)
			if err != nil {
				return nil, bad()
			}
			ref = ref.Truncate(time.Second)
			var want func(int) bool
			switch opName {
			case "eq":
				want = func(c int) bool { return c == 0 }
			case "gt":
				want = func(c int) bool { return c > 0 }
			case "gte":
				want = func(c int) bool { return c >= 0 }
			case "lt":
				want = func(c int) bool { return c < 0 }
			case "lte":
				want = func(c int) bool { return c <= 0 }
			default:
				return nil, bad()
			}
			preds = append(preds, func(k *key, _ time.Time) bool {
				t := date(k)
				return t != nil && want(t.Truncate(time.Second).Compare(ref))
			})
		}
	}
	return preds, nil
}
