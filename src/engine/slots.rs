//! Slots: the KV caches of several sequences, so an agent runtime that interleaves
//! conversations (or an editor completing in two files) keeps each one's prefix instead of
//! evicting it on every switch. A request takes the slot whose kept tokens share the
//! longest prefix with its prompt and prefills only the rest; ties, and prompts that share
//! nothing with any slot, take the least recently used slot (an empty one first), evicting
//! what it held. The session holds the caches (`Session::use_slot` picks the one steps
//! use); this file only decides which, and keeps each parked slot's token list.

/// How a request found its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotEvent {
    pub slot: usize,
    /// Some kept prefix was reused.
    pub hit: bool,
    /// A miss took a slot that held another sequence, which is gone now.
    pub evicted: bool,
}

/// Tokens shared at the start of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[derive(Debug)]
pub struct Slots {
    /// Kept tokens of every slot but the active one (the engine holds the active slot's).
    parked: Vec<Vec<u32>>,
    /// When each slot was last taken (a counter; 0: never).
    used: Vec<u64>,
    clock: u64,
    pub active: usize,
    pub last: Option<SlotEvent>,
}

impl Slots {
    pub fn new(n: usize) -> Slots {
        let n = n.max(1);
        Slots {
            parked: vec![Vec::new(); n],
            used: vec![0; n],
            clock: 0,
            active: 0,
            last: None,
        }
    }

    pub fn count(&self) -> usize {
        self.parked.len()
    }

    pub fn parked_tokens(&self) -> usize {
        self.parked.iter().map(Vec::len).sum()
    }

    pub fn forget(&mut self) {
        self.parked.iter_mut().for_each(Vec::clear);
        self.used.iter_mut().for_each(|u| *u = 0);
        self.last = None;
    }

    /// The slot `prompt` should take (`active_tokens`: what the active slot holds): the
    /// longest common prefix among the slots it would mostly reuse (a prefix of at least
    /// half of what the slot keeps or of the prompt, so a prompt that shares a few opening
    /// tokens with another conversation does not wipe it), ties to the least recently used;
    /// otherwise the least recently used slot, an empty one first.
    pub fn choose(&mut self, active_tokens: &[u32], prompt: &[u32]) -> (usize, SlotEvent) {
        let kept = |i: usize| -> &[u32] {
            if i == self.active {
                active_tokens
            } else {
                &self.parked[i]
            }
        };
        let mut hit: Option<(usize, usize)> = None;
        let mut lru = 0;
        for i in 0..self.count() {
            let k = kept(i);
            let l = common_prefix(k, prompt);
            if l > 0 && (l * 2 >= k.len() || l * 2 >= prompt.len()) {
                let better = match hit {
                    None => true,
                    Some((b, bl)) => l > bl || (l == bl && self.used[i] < self.used[b]),
                };
                if better {
                    hit = Some((i, l));
                }
            }
            let (ki, kl) = (k.is_empty(), kept(lru).is_empty());
            if (ki && !kl) || (ki == kl && self.used[i] < self.used[lru]) {
                lru = i;
            }
        }
        let slot = hit.map_or(lru, |(i, _)| i);
        let event = SlotEvent {
            slot,
            hit: hit.is_some(),
            evicted: hit.is_none() && !kept(slot).is_empty(),
        };
        self.clock += 1;
        self.used[slot] = self.clock;
        (slot, event)
    }

    /// Parks the active slot's tokens (taken from `active_tokens`) and makes `slot`
    /// active, its tokens moved into `active_tokens`.
    pub fn switch(&mut self, active_tokens: &mut Vec<u32>, slot: usize) {
        std::mem::swap(active_tokens, &mut self.parked[self.active]);
        std::mem::swap(active_tokens, &mut self.parked[slot]);
        self.active = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_misses_take_the_least_recently_used() {
        let mut s = Slots::new(3);
        let mut active: Vec<u32> = Vec::new();
        fn run(s: &mut Slots, active: &mut Vec<u32>, prompt: &[u32]) -> SlotEvent {
            let (slot, ev) = s.choose(active, prompt);
            if slot != s.active {
                s.switch(active, slot);
            }
            active.clear();
            active.extend_from_slice(prompt);
            ev
        }
        // Three conversations fill the three slots (empty slots first, no eviction).
        let a = run(&mut s, &mut active, &[1, 2, 3]);
        let b = run(&mut s, &mut active, &[7, 8]);
        let c = run(&mut s, &mut active, &[9]);
        assert_eq!([a.slot, b.slot, c.slot], [0, 1, 2]);
        assert!(!a.hit && !a.evicted && !b.evicted && !c.evicted);
        // Each one's next turn finds its own slot again.
        let a2 = run(&mut s, &mut active, &[1, 2, 3, 4]);
        assert_eq!((a2.slot, a2.hit, a2.evicted), (0, true, false));
        let b2 = run(&mut s, &mut active, &[7, 8, 5]);
        assert_eq!((b2.slot, b2.hit), (1, true));
        assert_eq!(s.parked_tokens() + active.len(), 4 + 3 + 1);
        // A fourth conversation evicts the least recently used (slot 2, "9").
        let d = run(&mut s, &mut active, &[4, 4]);
        assert_eq!((d.slot, d.hit, d.evicted), (2, false, true));
        // A prompt sharing only its opening tokens with a slot (less than half of what
        // the slot keeps and of the prompt) does not take it: it goes to the least
        // recently used.
        let e = run(&mut s, &mut active, &[1, 9, 9]);
        assert_eq!((e.slot, e.hit, e.evicted), (0, false, true));
        // The same prompt again after a long answer reuses its slot.
        let g = run(&mut s, &mut active, &[7, 8, 5, 6, 6, 6, 6]);
        assert_eq!((g.slot, g.hit), (1, true));
        let h = run(&mut s, &mut active, &[7, 8, 5]);
        assert_eq!((h.slot, h.hit), (1, true));
        let mut s = Slots::new(2);
        let mut active = Vec::new();
        run(&mut s, &mut active, &[1, 2, 3, 4]);
        let f = run(&mut s, &mut active, &[1, 2, 7]);
        assert_eq!((f.slot, f.hit), (0, true));
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
    }
}
