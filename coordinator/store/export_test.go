package store

// SetHistory makes b keep only its last n commits for Watch.
func SetHistory(b *Bolt, n int) {
	b.hist.mu.Lock()
	defer b.hist.mu.Unlock()
	b.hist.max = n
}
