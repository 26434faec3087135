package main

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// Status is what GET /status.json answers, and what GET /status renders.
type Status struct {
	GeneratedAt time.Time     `json:"generated_at"`
	Tables      []TableStatus `json:"tables"`
}

// TableStatus is the migration of one table.
type TableStatus struct {
	Table string `json:"table"`
	// Mode is where reads go: readthrough, old (rolled back) or new, or a
	// mode rolled out to a share of the keys ("readthrough 5%").
	Mode string `json:"mode"`
	// KeyRange is OLD's smallest and largest key; nil while OLD is empty.
	KeyRange *KeyRange `json:"key_range"`
	// TotalKeys counts the keys of KeyRange (whether OLD holds each or
	// not); SettledKeys those the tracker says live in NEW.
	TotalKeys   int64   `json:"total_keys"`
	SettledKeys int64   `json:"settled_keys"`
	Percent     float64 `json:"percent"` // 100 * SettledKeys / TotalKeys
	// SettledPerSec is how fast keys settle, whatever settles them
	// (promotions, writes, the sweep), measured on the tracker.
	SettledPerSec float64        `json:"settled_per_sec"`
	Reads         ReadStats      `json:"reads"`
	Promotion     PromotionStats `json:"promotion"`
	Sweep         SweepStats     `json:"sweep"`
	Heatmap       Heatmap        `json:"heatmap"`
	// Errors says what could not be read this time; the rest is still
	// right (a part that failed keeps its last known value or is zero).
	Errors []string `json:"errors,omitempty"`
}

// KeyRange is an inclusive range of keys.
type KeyRange struct {
	Lo int64 `json:"lo"`
	Hi int64 `json:"hi"`
}

// ReadStats are the service's GET /accounts/{id} requests over the last
// WindowSeconds.
type ReadStats struct {
	PerSec float64 `json:"per_sec"`
	// NewShare is the share of them NEW answered, from 0 to 1.
	NewShare      float64 `json:"new_share"`
	WindowSeconds float64 `json:"window_seconds"`
}

// PromotionStats are this process's promotions over the read window.
type PromotionStats struct {
	// ScheduledPerSec counts keys reads found only in OLD, enqueued for
	// promotion.
	ScheduledPerSec float64 `json:"scheduled_per_sec"`
	// CopiedPerSec counts rows this process's worker copied to NEW; 0
	// when the workers run elsewhere (serve -worker=false).
	CopiedPerSec    float64 `json:"copied_per_sec"`
	WorkerInProcess bool    `json:"worker_in_process"`
}

// SweepStats sums up the sweep's progress as its shards last saved it
// (coldsweep.SummarizeSweep).
type SweepStats struct {
	// State is "not started", "running", "held" (throttled or paused,
	// Throttled says why), "stalled" (no progress saved for a while),
	// "stopped" (interrupted before its end) or "finished".
	State      string    `json:"state"`
	Shards     int       `json:"shards"`
	Chunks     int64     `json:"chunks"`
	ChunksDone int64     `json:"chunks_done"`
	Percent    float64   `json:"percent"`
	KeysPerSec float64   `json:"keys_per_sec"`
	RowsPerSec float64   `json:"rows_per_sec"`
	ETASeconds float64   `json:"eta_seconds"`
	Throttled  string    `json:"throttled,omitempty"`
	Updated    time.Time `json:"updated,omitzero"`
}

// Heatmap cuts the key range into cells of KeysPerCell keys, or one more
// (the extra keys spread over the range), in key order.
type Heatmap struct {
	KeysPerCell int64  `json:"keys_per_cell"`
	Cells       []Cell `json:"cells"`
}

// Cell is the keys [Lo, Hi] and how many of them are settled.
type Cell struct {
	Lo       int64   `json:"lo"`
	Hi       int64   `json:"hi"`
	Settled  int64   `json:"settled"`
	Fraction float64 `json:"fraction"`
}

// statusConfig configures a statusBoard.
type statusConfig struct {
	// Prefix is the Redis key prefix the sweeper saves its progress under.
	Prefix string
	// Cells is the most cells of the heatmap, itself at most
	// coldsweep.MaxHeatmapCells.
	Cells int
	// TTL is how long a computed status is served again: counting the
	// bitmap costs Redis a BITCOUNT per cell.
	TTL             time.Duration
	WorkerInProcess bool
	Logger          *slog.Logger
}

// statusBoard computes the status of the migration, at most once per TTL
// whatever the number of viewers.
type statusBoard struct {
	cfg     statusConfig
	old     *pgxpool.Pool
	rdb     redis.UniversalClient
	tracker *tracker.Tracker
	mode    *fallback.Switch
	rates   *rates

	mu      sync.Mutex // held while computing, so viewers share one computation
	last    *Status
	bounds  *KeyRange       // last known OLD range, kept while OLD is down
	settled []settledSample // the last rateWindow of settled counts, for SettledPerSec
}

type settledSample struct {
	at time.Time
	n  int64
}

// maxStatusTime bounds one computation, whatever the viewer's request.
const maxStatusTime = 5 * time.Second

// current returns the status, computed at most TTL ago.
func (b *statusBoard) current(ctx context.Context) *Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last != nil && time.Since(b.last.GeneratedAt) < b.cfg.TTL {
		return b.last
	}
	// A viewer that goes away must not cut short what others will be shown.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxStatusTime)
	defer cancel()
	b.last = &Status{GeneratedAt: time.Now().UTC(), Tables: []TableStatus{b.table(ctx)}}
	return b.last
}

func (b *statusBoard) table(ctx context.Context) TableStatus {
	ts := TableStatus{Table: table, Mode: b.mode.Policy().String()}
	fail := func(what string, err error) {
		ts.Errors = append(ts.Errors, what+": "+err.Error())
		b.cfg.Logger.WarnContext(ctx, "status: "+what, "error", err)
	}

	var lo, hi *int64
	if err := b.old.QueryRow(ctx, `SELECT min(id), max(id) FROM accounts`).Scan(&lo, &hi); err != nil {
		fail("OLD's key range", err)
	} else if lo == nil {
		b.bounds = nil
	} else {
		b.bounds = &KeyRange{Lo: *lo, Hi: *hi}
	}
	if kr := b.bounds; kr != nil {
		ts.KeyRange = kr
		ts.TotalKeys = kr.Hi - kr.Lo + 1
		cells, err := b.heatmap(ctx, *kr)
		if err != nil {
			fail("tracker", err)
		} else {
			ts.Heatmap = cells
			for _, c := range cells.Cells {
				ts.SettledKeys += c.Settled
			}
			ts.Percent = 100 * float64(ts.SettledKeys) / float64(ts.TotalKeys)
			ts.SettledPerSec = b.settleRate(ts.SettledKeys)
		}
	}

	if from, to, ok := b.rates.over(rateWindow); ok {
		secs := to.at.Sub(from.at).Seconds()
		newReads, oldReads := to.readsNew-from.readsNew, to.readsOld-from.readsOld
		ts.Reads = ReadStats{PerSec: (newReads + oldReads) / secs, WindowSeconds: math.Round(secs)}
		if newReads+oldReads > 0 {
			ts.Reads.NewShare = newReads / (newReads + oldReads)
		}
		ts.Promotion.ScheduledPerSec = (to.scheduled - from.scheduled) / secs
		ts.Promotion.CopiedPerSec = (to.promoted - from.promoted) / secs
	}
	ts.Promotion.WorkerInProcess = b.cfg.WorkerInProcess

	if sw, err := b.sweep(ctx); err != nil {
		fail("sweep progress", err)
	} else {
		ts.Sweep = sw
	}
	return ts
}

// heatmap counts the settled keys of each cell of kr.
func (b *statusBoard) heatmap(ctx context.Context, kr KeyRange) (Heatmap, error) {
	cells, err := coldsweep.Heatmap(ctx, b.tracker, coldsweep.Span{Lo: kr.Lo, Hi: kr.Hi + 1}, b.cfg.Cells)
	if err != nil {
		return Heatmap{}, err
	}
	h := Heatmap{KeysPerCell: (kr.Hi - kr.Lo + 1) / int64(len(cells)), Cells: make([]Cell, len(cells))}
	for i, c := range cells {
		h.Cells[i] = Cell{Lo: c.Lo, Hi: c.Hi - 1, Settled: c.Settled, Fraction: c.Fraction()}
	}
	return h, nil
}

// settleRate records settled keys now and returns how fast they grew over
// the rate window.
func (b *statusBoard) settleRate(settled int64) float64 {
	now := time.Now()
	b.settled = append(b.settled, settledSample{now, settled})
	for len(b.settled) > 1 && now.Sub(b.settled[0].at) > rateWindow {
		b.settled = b.settled[1:]
	}
	first := b.settled[0]
	if secs := now.Sub(first.at).Seconds(); secs >= 1 {
		return float64(max(0, settled-first.n)) / secs
	}
	return 0
}

// staleSweep is how long a sweep may save no progress before it is shown
// as stalled (a sweeper saves it every second).
const staleSweep = 10 * time.Second

// sweep sums up the progress the sweep's shards saved in Redis.
func (b *statusBoard) sweep(ctx context.Context) (SweepStats, error) {
	ps, err := coldsweep.LoadProgress(ctx, b.rdb, b.cfg.Prefix, table)
	if err != nil {
		return SweepStats{}, err
	}
	s := coldsweep.SummarizeSweep(ps, time.Now(), staleSweep)
	return SweepStats{
		State: string(s.State), Shards: s.Shards, Chunks: s.Chunks, ChunksDone: s.ChunksDone,
		Percent: 100 * s.Fraction(), KeysPerSec: s.KeysPerSec, RowsPerSec: s.RowsPerSec,
		ETASeconds: s.ETA.Seconds(), Throttled: s.Throttled, Updated: s.Updated,
	}, nil
}

func (b *statusBoard) serveJSON(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(b.current(r.Context()))
}

//go:embed status.html
var statusFiles embed.FS

var statusPage = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"pct":         fmtPercent,
	"int":         fmtInt,
	"rate":        fmtRate,
	"fraction":    func(f float64) string { return strconv.FormatFloat(f, 'f', 3, 64) },
	"mul100":      func(f float64) float64 { return 100 * f },
	"shade":       shade,
	"sweepDetail": sweepDetail,
}).ParseFS(statusFiles, "status.html"))

func (b *statusBoard) servePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := statusPage.Execute(w, b.current(r.Context())); err != nil {
		b.cfg.Logger.ErrorContext(r.Context(), "status page", "error", err)
	}
}

// The page's script formats numbers exactly as these do, so that a
// refresh changes nothing but the values.

// fmtPercent rounds down to one decimal: 99.96% is not 100.0%.
func fmtPercent(p float64) string {
	return strconv.FormatFloat(math.Floor(p*10)/10, 'f', 1, 64) + "%"
}

// fmtInt writes n with thousands separators: 200,000.
func fmtInt(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	out := make([]byte, 0, len(s)+len(s)/3+1)
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// shade is a heatmap cell's colour, from 0 (grey) to 1 (green): any settled
// key tints the cell, so that early promotions show.
func shade(fraction float64) string {
	if fraction <= 0 {
		return "0"
	}
	return strconv.FormatFloat(0.15+0.85*fraction, 'f', 3, 64)
}

// sweepDetail is the line under the sweep's state.
func sweepDetail(w SweepStats) string {
	if w.State == "not started" {
		return "cold keys move when the sweeper runs"
	}
	d := fmtPercent(w.Percent) + " of chunks"
	if w.State != "finished" {
		d += " · " + fmtRate(w.KeysPerSec) + " keys/s"
	}
	if w.ETASeconds > 0 {
		d += " · " + fmtDuration(w.ETASeconds) + " left"
	}
	if w.Throttled != "" {
		d += " · " + w.Throttled
	}
	return d
}

// fmtDuration writes a time left: 45s, 3m07s, 2h05m.
func fmtDuration(secs float64) string {
	s := int64(secs)
	switch {
	case secs >= 3600:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	case secs >= 60:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	return fmt.Sprintf("%ds", int64(math.Ceil(secs)))
}

// fmtRate writes a per-second rate: whole numbers from 100 on, one decimal
// below.
func fmtRate(r float64) string {
	if r >= 100 {
		return fmtInt(int64(math.Round(r)))
	}
	return fmt.Sprintf("%.1f", r)
}
