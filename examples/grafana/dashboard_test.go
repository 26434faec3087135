package grafana

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/httpmw"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// Every metric the dashboard's panels and variables query is one that
// lazymigrate's packages register.
func TestDashboardQueriesExposedMetrics(t *testing.T) {
	t.Parallel()
	exposed := libraryMetrics(t)
	d := loadDashboard(t)

	used := map[string]bool{}
	check := func(where, expr string) {
		names, err := metricNames(expr)
		if err != nil {
			t.Errorf("%s: %v in %s", where, err, expr)
			return
		}
		if len(names) == 0 {
			t.Errorf("%s: no metric in %s", where, expr)
		}
		for _, name := range names {
			family, err := exposed.resolve(name)
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			used[family] = true
		}
	}
	queries := 0
	for _, p := range d.allPanels() {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			check(fmt.Sprintf("panel %q query %s", p.Title, tg.RefID), tg.Expr)
			queries++
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		sel, ok := strings.CutPrefix(v.Definition, "label_values(")
		i := strings.LastIndex(sel, ",")
		if !ok || i < 0 {
			t.Errorf("variable %q: want label_values(<metric>, <label>), got %q", v.Name, v.Definition)
			continue
		}
		check(fmt.Sprintf("variable %q", v.Name), sel[:i])
	}

	// The families the dashboard is for.
	for _, want := range []string{
		"lazymigrate_reads_total", "lazymigrate_http_requests_total", "lazymigrate_http_request_duration_seconds",
		"lazymigrate_promotions_total", "lazymigrate_tracker_settled_keys", "lazymigrate_sweep_progress_ratio",
		"lazymigrate_sweep_rows_total", "lazymigrate_sweep_throttled", "lazymigrate_mirror_total",
	} {
		if !used[want] {
			t.Errorf("no panel queries %s", want)
		}
	}
	var unused []string
	for name := range exposed {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	t.Logf("%d queries over %d of the %d families the library exposes; not on the dashboard: %v",
		queries, len(used), len(exposed), unused)
}

// dashboard is the part of Grafana's dashboard JSON model the test reads.
type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"` // a collapsed row's
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
}

func (d *dashboard) allPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	b, err := os.ReadFile("lazymigrate.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("lazymigrate.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("lazymigrate.json: title %q, uid %q, %d panels", d.Title, d.UID, len(d.Panels))
	}
	return &d
}

// The dashboard's layout is sound: panels sit on Grafana's 24-column grid
// and do not overlap.
func TestDashboardLayout(t *testing.T) {
	t.Parallel()
	d := loadDashboard(t)
	type cell struct{ x, y int }
	taken := map[cell]string{}
	for _, p := range d.allPanels() {
		g := p.GridPos
		if g.W < 1 || g.H < 1 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is off the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
	}
}

// families maps each metric family the library exposes to its type.
type families map[string]kind

type kind int

const (
	plain kind = iota // a counter or gauge: one series name
	histogram
)

// resolve returns the family of a series name: the name itself, or for a
// histogram's _bucket, _sum and _count series, the histogram.
func (f families) resolve(name string) (string, error) {
	if k, ok := f[name]; ok {
		if k == histogram {
			return "", fmt.Errorf("%s is a histogram: query its _bucket, _sum or _count series", name)
		}
		return name, nil
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && f[base] == histogram {
			return base, nil
		}
	}
	return "", fmt.Errorf("%s is not a metric the library exposes", name)
}

// account is a row of testenv's accounts table.
type account struct {
	ID           int64
	Email, Name  string
	BalanceCents int64
	Status       string
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

func TestResolve(t *testing.T) {
	t.Parallel()
	f := families{"lazymigrate_reads_total": plain, "lazymigrate_read_duration_seconds": histogram}
	for name, want := range map[string]string{
		"lazymigrate_reads_total":                  "lazymigrate_reads_total",
		"lazymigrate_read_duration_seconds_bucket": "lazymigrate_read_duration_seconds",
		"lazymigrate_read_duration_seconds_count":  "lazymigrate_read_duration_seconds",
		"lazymigrate_read_duration_seconds":        "", // a histogram has no series of its own name
		"lazymigrate_reads_total_count":            "", // a counter has no _count
		"lazymigrate_writes_total":                 "",
	} {
		got, err := f.resolve(name)
		if got != want || (err != nil) != (want == "") {
			t.Errorf("resolve(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
}

// recorder is a registry that remembers the collectors registered on it.
type recorder struct {
	*prometheus.Registry
	mu         sync.Mutex
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	if err := r.Registry.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// libraryMetrics builds every component of the library that takes a
// Registerer, on real databases and Redis, and returns the metric families
// they register.
func libraryMetrics(t *testing.T) families {
	t.Helper()
	ctx := context.Background()
	p := testenv.NewPair(t)
	rdb, prefix := testenv.Redis(t)
	reg := &recorder{Registry: prometheus.NewRegistry()}
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix, Registerer: reg})
	must(err)
	copier, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "accounts", Marker: tr, Registerer: reg})
	must(err)
	enq, err := promote.NewEnqueuer(asynq.NewClientFromRedisClient(rdb), "accounts", &promote.EnqueuerConfig{Registerer: reg})
	must(err)
	_, err = promote.NewHandler([]*promote.Copier{copier}, &promote.HandlerConfig{Registerer: reg})
	must(err)
	mode, err := fallback.New(rdb, "accounts", &fallback.Config{Prefix: prefix, Registerer: reg})
	must(err)
	repo, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[account]{
		Table: "accounts", Tracker: tr, Scheduler: enq, Mode: mode, Copier: copier, Registerer: reg,
	})
	must(err)
	repo.Close()
	_, err = httpmw.New(p.Old.Pool, p.New.Pool, &httpmw.Config{Key: httpmw.PathKey("id"), NoTombstones: true, Registerer: reg})
	must(err)
	_, err = coldsweep.New(&coldsweep.Config{Copier: copier, Tracker: tr, Redis: rdb, Prefix: prefix, Registerer: reg})
	must(err)
	_, err = coldsweep.Verify(ctx, p.Old.Pool, p.New.Pool, &coldsweep.VerifyConfig{Table: "accounts", Registerer: reg})
	must(err)

	out := families{}
	for _, c := range reg.collectors {
		k := plain
		switch c.(type) {
		case *prometheus.HistogramVec, prometheus.Histogram:
			k = histogram
		}
		descs := make(chan *prometheus.Desc)
		go func() {
			c.Describe(descs)
			close(descs)
		}()
		for d := range descs {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			out[m[1]] = k
		}
	}
	for name := range out {
		if !strings.HasPrefix(name, "lazymigrate_") {
			t.Errorf("the library registers %s, outside the lazymigrate_ namespace", name)
		}
	}
	if len(out) < 30 {
		t.Fatalf("found only %d families: %v", len(out), slices.Sorted(maps.Keys(out)))
	}
	return out
}
