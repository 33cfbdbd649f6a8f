package store

// SetHistory makes b keep only its last n commits for Watch.
func SetHistory(b *Bolt, n int) {
	b.hist.mu.Lock()
	defer b.hist.mu.Unlock()
	b.hist.max = n
}

// Queued returns how many Update calls wait for b's next commit.
func Queued(b *Bolt) int {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	return len(b.queue)
}
