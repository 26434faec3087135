package lazy

// FoldReads makes r read NEW with the folded statement (on) or the plain
// one, as many misses or many hits would, until its next missWindow reads
// choose again.
func FoldReads[T any](r *Repo[T], on bool) { r.misses.fold.Store(on) }
