package coldsweep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// progressTTL keeps a finished sweep's progress visible for a while.
const progressTTL = 30 * 24 * time.Hour

// progressKey is a Redis hash holding, per shard and layout, the last
// progress of the sweep of a table.
func progressKey(prefix, table string) string { return prefix + ":sweep:" + table }

func pauseKey(prefix, table string) string { return prefix + ":sweep:" + table + ":paused" }

// layoutKey records the chunk size and shard count a table's sweep runs
// with: shards own chunk numbers mod n, so shards of one sweep must agree
// on both, or some keys belong to no shard.
func layoutKey(prefix, table string) string { return prefix + ":sweep:" + table + ":layout" }

// ErrLayoutChanged is returned by Run for a shard whose chunk size or shard
// count differs from the unfinished sweep's recorded in Redis: with shards
// of two layouts, some keys belong to no shard, and every shard would report
// done over a range that is not. Finish the sweep with the same Chunk and
// Shard.N, or run one unsharded sweep, which covers the whole range whatever
// came before.
var ErrLayoutChanged = errors.New("coldsweep: this shard's chunk size or shard count differs from the unfinished sweep's")

// claimLayout records the sweep's layout, refusing a sharded run whose
// layout differs from an earlier sweep's that has not covered its range. An
// unsharded run covers the whole range, so it may always change the layout;
// so may any run once every shard of the recorded layout has finished. The
// check and the write are one optimistic transaction on the layout key, so
// shards starting together cannot both win with different layouts, and a
// refusal stands only if the layout it judged is still the recorded one.
func (s *Sweeper) claimLayout(ctx context.Context) error {
	rdb := s.cfg.Redis
	if rdb == nil {
		return nil
	}
	want := s.layout()
	key := layoutKey(s.cfg.Prefix, s.table)
	var replaced bool
	claim := func(tx *redis.Tx) error {
		replaced = false
		got, err := tx.Get(ctx, key).Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return fmt.Errorf("coldsweep: read the layout of %s's sweep: %w", s.table, err)
		case got == want:
			// Keep the record alive as long as the sweep runs.
			return tx.Expire(ctx, key, progressTTL).Err()
		case s.cfg.Shard.N > 1:
			ps, err := LoadProgress(ctx, rdb, s.cfg.Prefix, s.table)
			if err != nil {
				return err
			}
			if left := unfinishedShards(got, ps); left != "" {
				// Another shard may have replaced the layout since got was
				// read, clearing the progress that would show got's shards
				// finished: an empty transaction fails then, and the claim
				// starts over.
				if _, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Exists(ctx, key)
					return nil
				}); err != nil {
					return err
				}
				return fmt.Errorf("%w: the sweep of %s runs with %s, this shard with %s, and %s: run every shard with the same chunk size and shard count, or one unsharded sweep (or, if no shard of it runs any more, delete the Redis key %s)",
					ErrLayoutChanged, s.table, got, want, left, key)
			}
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, key, want, progressTTL)
			return nil
		})
		replaced = err == nil && got != ""
		return err
	}
	var err error
	for range 10 {
		if err = rdb.Watch(ctx, claim, key); !errors.Is(err, redis.TxFailedErr) {
			break
		}
	}
	if err != nil {
		return err
	}
	if replaced {
		// The earlier layout's progress would read as this one's.
		if err := clearOtherLayouts(ctx, rdb, s.cfg.Prefix, s.table, want); err != nil {
			return fmt.Errorf("coldsweep: clear the progress of %s's earlier sweep: %w", s.table, err)
		}
	}
	return nil
}

// layout is how the sweep cuts its range, as recorded in Redis.
func (s *Sweeper) layout() string {
	return fmt.Sprintf("chunk=%d shards=%d", s.cfg.Chunk, max(s.cfg.Shard.N, 1))
}

// deleteUnchanged deletes the given fields of a hash, each only if it still
// holds the value given after it: a field rewritten since it was read is
// another run's, and stays.
var deleteUnchanged = redis.NewScript(`
local n = 0
for i = 1, #ARGV, 2 do
	if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
		n = n + redis.call('HDEL', KEYS[1], ARGV[i])
	end
end
return n
`)

// clearOtherLayouts deletes the progress records of table's sweep that
// another layout than layout saved. It runs after the layout was replaced,
// while shards of the new layout may already save theirs: those stay.
func clearOtherLayouts(ctx context.Context, rdb redis.UniversalClient, prefix, table, layout string) error {
	key := progressKey(prefix, table)
	m, err := rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return err
	}
	var args []any
	for field, v := range m {
		var p Progress
		if json.Unmarshal([]byte(v), &p) == nil && p.Layout == layout {
			continue
		}
		args = append(args, field, v)
	}
	if len(args) == 0 {
		return nil
	}
	return deleteUnchanged.Run(ctx, rdb, []string{key}, args...).Err()
}

// unfinishedShards says which shards of the sweep recorded with layout
// ("chunk=C shards=N") have not swept all their chunks, by the progress
// they saved: a shard that saved none yet has not ("" when every one has).
func unfinishedShards(layout string, ps []Progress) string {
	var chunk, n int64
	if _, err := fmt.Sscanf(layout, "chunk=%d shards=%d", &chunk, &n); err != nil || n < 1 {
		return "its layout record " + strconv.Quote(layout) + " cannot be read"
	}
	done := map[int64]bool{}
	for _, p := range ps {
		sh, err := ParseShard(p.Shard)
		if err != nil || max(sh.N, 1) != n || (p.Layout != "" && p.Layout != layout) {
			continue // another layout's record
		}
		done[sh.I] = done[sh.I] || (p.ChunksDone >= p.Chunks && p.ChunksFailed == 0)
	}
	var left []string
	for i := range n {
		if !done[i] {
			left = append(left, fmt.Sprintf("%d/%d", i, n))
		}
	}
	if len(left) == 0 {
		return ""
	}
	return "shards " + strings.Join(left, ", ") + " have not finished"
}

// field is p's field in the progress hash. It names the layout as well as
// the shard: a shard that starts records its run before it claims the
// layout, and must not overwrite the record of the same shard of the
// sweep it may then be refused to replace.
func (p Progress) field() string { return p.Layout + " " + p.Shard }

// forgetProgress deletes the record p, if it is still the one saved.
func forgetProgress(ctx context.Context, rdb redis.UniversalClient, prefix string, p Progress) error {
	if rdb == nil {
		return nil
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return deleteUnchanged.Run(ctx, rdb, []string{progressKey(prefix, p.Table)}, p.field(), string(b)).Err()
}

func saveProgress(ctx context.Context, rdb redis.UniversalClient, prefix string, p Progress) error {
	if rdb == nil {
		return nil
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	key := progressKey(prefix, p.Table)
	pipe := rdb.TxPipeline()
	pipe.HSet(ctx, key, p.field(), b)
	// The shard's record as versions before layouts were in the fields
	// named it: left, it would still read as this shard's, finished.
	pipe.HDel(ctx, key, p.Shard)
	pipe.Expire(ctx, key, progressTTL)
	_, err = pipe.Exec(ctx)
	return err
}

// LoadProgress returns the last progress saved by each shard of the sweep
// of table, ordered by shard. prefix is Config.Prefix ("" for the default).
func LoadProgress(ctx context.Context, rdb redis.UniversalClient, prefix, table string) ([]Progress, error) {
	if prefix == "" {
		prefix = "lazymigrate"
	}
	m, err := rdb.HGetAll(ctx, progressKey(prefix, table)).Result()
	if err != nil {
		return nil, fmt.Errorf("coldsweep: load progress of %s: %w", table, err)
	}
	out := make([]Progress, 0, len(m))
	for shard, v := range m {
		var p Progress
		if err := json.Unmarshal([]byte(v), &p); err != nil {
			return nil, fmt.Errorf("coldsweep: progress of %s shard %s: %w", table, shard, err)
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Progress) int {
		sa, _ := ParseShard(a.Shard)
		sb, _ := ParseShard(b.Shard)
		if a.Shard == b.Shard {
			return 0
		}
		if sa.N != sb.N {
			return int(sa.N - sb.N)
		}
		return int(sa.I - sb.I)
	})
	return out, nil
}

// SetPaused sets or clears the pause flag of table's sweep: every sweeper
// of the table following the same Redis holds after its chunks in flight
// while it is set. prefix is Config.Prefix ("" for the default).
func SetPaused(ctx context.Context, rdb redis.UniversalClient, prefix, table string, paused bool) error {
	if rdb == nil {
		return errors.New("coldsweep: pausing a sweep needs Config.Redis")
	}
	if prefix == "" {
		prefix = "lazymigrate"
	}
	var err error
	if paused {
		err = rdb.Set(ctx, pauseKey(prefix, table), time.Now().UTC().Format(time.RFC3339), 0).Err()
	} else {
		err = rdb.Del(ctx, pauseKey(prefix, table)).Err()
	}
	if err != nil {
		return fmt.Errorf("coldsweep: pause flag of %s: %w", table, err)
	}
	return nil
}

// IsPaused reports whether table's sweep is paused.
func IsPaused(ctx context.Context, rdb redis.UniversalClient, prefix, table string) (bool, error) {
	if rdb == nil {
		return false, errors.New("coldsweep: reading the pause flag needs a Redis client")
	}
	if prefix == "" {
		prefix = "lazymigrate"
	}
	n, err := rdb.Exists(ctx, pauseKey(prefix, table)).Result()
	if err != nil {
		return false, fmt.Errorf("coldsweep: pause flag of %s: %w", table, err)
	}
	return n > 0, nil
}
