//! The Wing & Gong / Lowe (WGL) linearizability search, as in Porcupine.
//!
//! Calls and returns of one key's operations sit in a doubly linked list in
//! history order. The search repeatedly takes a call that precedes every
//! remaining return, applies it to the model, and "lifts" it (its call and
//! return) out of the list; when no such call fits, the operation whose
//! return comes first cannot be linearized here, so it backtracks. Each
//! (set of linearized operations, model state) pair is explored once: the
//! memo is what makes the search practical.
//!
//! Operations with an unknown outcome never return and are optional: they
//! wait in a separate pool, ordered by invocation, and are tried only after
//! the available required calls (so configurations that used fewer of them
//! are met first), and the search succeeds once every required operation is
//! linearized. Two reductions keep many of them cheap, both exact: an optional operation
//! that would not change the state is never linearized, and optional
//! operations with equal input and output are interchangeable, so they are
//! used in invocation order and the memo counts them instead of naming them
//! (a configuration that used more of them than one already seen is
//! skipped).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use super::models::Model;

/// One operation of the key under check.
#[derive(Clone, Debug)]
pub(crate) struct Call<M: Model> {
    /// Caller's identifier (an operation id).
    pub op: usize,
    pub input: M::Input,
    pub output: M::Output,
    /// Logical time of the invocation.
    pub call: usize,
    /// Logical time of the completion; `None`: unknown, optional.
    pub ret: Option<usize>,
}

/// Limits on one search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_steps: u64,
    pub max_states: usize,
    pub max_memo_bytes: usize,
    pub deadline: Option<Instant>,
}

/// How a search ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Search<S> {
    /// A linearization exists.
    Linearizable { steps: u64 },
    /// None exists. `longest` is the longest partial linearization found
    /// (operation ids in order), `state` the model state after it, and
    /// `stuck` the operation whose return stopped it (the first one met at
    /// that depth).
    Violation {
        steps: u64,
        longest: Vec<usize>,
        state: S,
        stuck: usize,
    },
    /// The step budget, memo budget or deadline ran out.
    Exhausted { steps: u64, why: Exhaustion },
}

/// Which budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exhaustion {
    Steps,
    States,
    Time,
}

/// A set of call indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

/// A doubly linked list over nodes `0..len`, plus a head and a tail.
struct Links {
    prev: Vec<usize>,
    next: Vec<usize>,
    head: usize,
    tail: usize,
}

impl Links {
    /// Links `order` (distinct nodes below `len`); other nodes stay out.
    fn new(len: usize, order: impl IntoIterator<Item = usize>) -> Self {
        let (head, tail) = (len, len + 1);
        let mut l = Links {
            prev: vec![head; len + 2],
            next: vec![tail; len + 2],
            head,
            tail,
        };
        let mut last = head;
        for node in order {
            l.next[last] = node;
            l.prev[node] = last;
            last = node;
        }
        l.next[last] = tail;
        l.prev[tail] = last;
        l
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes the matching `unlink` (in reverse order of unlinking).
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }
}

/// The required calls' invocations (node `2i`) and returns (`2i + 1`) in
/// history order, and, apart, the optional calls (node `i`) by invocation.
struct Lists {
    list: Links,
    pool: Links,
}

impl Lists {
    fn new<M: Model>(calls: &[Call<M>]) -> Self {
        let mut order: Vec<(usize, usize)> = Vec::with_capacity(2 * calls.len());
        let mut pool: Vec<(usize, usize)> = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            match c.ret {
                Some(ret) => order.extend([(c.call, 2 * i), (ret, 2 * i + 1)]),
                None => pool.push((c.call, i)),
            }
        }
        order.sort_unstable();
        pool.sort_unstable();
        Lists {
            list: Links::new(2 * calls.len(), order.into_iter().map(|(_, n)| n)),
            pool: Links::new(calls.len(), pool.into_iter().map(|(_, n)| n)),
        }
    }
}

/// Interchangeable optional calls: optional calls with equal input and
/// output. `twin[i]` is the previous member (by invocation) of call `i`'s
/// class and `class[i]` its class. Using the earliest unused member of a
/// class loses no linearization (any linearization can be rewritten to use
/// them in invocation order), so only how many are used matters.
struct Twins {
    twin: Vec<Option<usize>>,
    class: Vec<Option<usize>>,
    classes: usize,
}

impl Twins {
    fn new<M: Model>(calls: &[Call<M>]) -> Self {
        let mut order: Vec<usize> = (0..calls.len()).filter(|&i| calls[i].ret.is_none()).collect();
        order.sort_by_key(|&i| calls[i].call);
        let mut last: HashMap<(&M::Input, &M::Output), usize> = HashMap::new();
        let mut t = Twins {
            twin: vec![None; calls.len()],
            class: vec![None; calls.len()],
            classes: 0,
        };
        for i in order {
            let Some(prev) = last.insert((&calls[i].input, &calls[i].output), i) else {
                continue;
            };
            t.twin[i] = Some(prev);
            let class = *t.class[prev].get_or_insert(t.classes);
            if class == t.classes {
                t.classes += 1;
            }
            t.class[i] = Some(class);
        }
        t
    }
}

/// Visited configurations: (linearized calls outside twin classes, model
/// state) with the per-class counts of used members seen with it. A
/// configuration is new unless one seen with it used no more of any class:
/// fewer used interchangeable calls leave at least the same options.
struct Memo<S> {
    seen: HashMap<(Bitset, S), Vec<Box<[u32]>>>,
    entries: usize,
}

impl<S: Clone + Eq + Hash> Memo<S> {
    fn visit(&mut self, set: &Bitset, state: &S, counts: &[u32]) -> bool {
        let seen = self.seen.entry((set.clone(), state.clone())).or_default();
        if seen.iter().any(|v| v.iter().zip(counts).all(|(a, b)| a <= b)) {
            return false;
        }
        seen.push(counts.into());
        self.entries += 1;
        true
    }
}

/// Mutable search state.
struct Searcher<'a, M: Model> {
    model: &'a M,
    calls: &'a [Call<M>],
    lists: Lists,
    state: M::State,
    /// Every linearized call.
    linearized: Bitset,
    /// Linearized calls outside twin classes (the memo key).
    plain: Bitset,
    /// Used members per twin class.
    counts: Vec<u32>,
    twins: Twins,
    memo: Memo<M::State>,
    /// Linearized calls: call, state before it, and where to resume after
    /// undoing it.
    stack: Vec<(usize, M::State, Pos)>,
    longest: Vec<usize>,
    longest_state: M::State,
    longest_stuck: usize,
}

/// Where the scan is.
#[derive(Clone, Copy, Debug)]
enum Pos {
    /// At a node of the required list.
    List(usize),
    /// At an optional call, after every available required call failed:
    /// optional calls invoked before `limit` (the first remaining required
    /// return, that of call `stuck`) are available.
    Pool { node: usize, limit: usize, stuck: usize },
}

/// What one step decided.
enum Next {
    Continue(Pos),
    Done,
    Dead,
}

impl<'a, M: Model> Searcher<'a, M> {
    fn new(model: &'a M, calls: &'a [Call<M>]) -> Self {
        let state = model.init();
        let twins = Twins::new(calls);
        Searcher {
            model,
            calls,
            lists: Lists::new(calls),
            longest_state: state.clone(),
            state,
            linearized: Bitset::new(calls.len()),
            plain: Bitset::new(calls.len()),
            counts: vec![0; twins.classes],
            twins,
            memo: Memo {
                seen: HashMap::new(),
                entries: 0,
            },
            stack: Vec::new(),
            longest: Vec::new(),
            longest_stuck: 0,
        }
    }

    fn mark(&mut self, i: usize) {
        self.linearized.set(i);
        match self.twins.class[i] {
            Some(c) => self.counts[c] += 1,
            None => self.plain.set(i),
        }
    }

    fn unmark(&mut self, i: usize) {
        self.linearized.clear(i);
        match self.twins.class[i] {
            Some(c) => self.counts[c] -= 1,
            None => self.plain.clear(i),
        }
    }

    /// Whether call `i` may be linearized now; the next state if so. An
    /// optional call is skipped if an earlier twin is unused, or if it would
    /// not change the state (leaving it unused is never worse).
    fn applicable(&mut self, i: usize) -> Option<M::State> {
        let c = &self.calls[i];
        if c.ret.is_none() && self.twins.twin[i].is_some_and(|t| !self.linearized.get(t)) {
            return None;
        }
        let next = self.model.step(&self.state, &c.input, &c.output)?;
        if c.ret.is_none() && next == self.state {
            return None;
        }
        self.mark(i);
        if self.memo.visit(&self.plain, &next, &self.counts) {
            return Some(next);
        }
        self.unmark(i);
        None
    }

    /// Tries call `i` at `pos`; on success lifts it and restarts the scan.
    fn try_call(&mut self, i: usize, pos: Pos, skip: Pos) -> Next {
        let Some(next) = self.applicable(i) else {
            return Next::Continue(skip);
        };
        let prev = std::mem::replace(&mut self.state, next);
        match pos {
            Pos::List(_) => {
                self.lists.list.unlink(2 * i);
                self.lists.list.unlink(2 * i + 1);
            }
            Pos::Pool { .. } => self.lists.pool.unlink(i),
        }
        self.stack.push((i, prev, pos));
        Next::Continue(Pos::List(self.lists.list.first()))
    }

    /// Every available call failed before the return of call `stuck`:
    /// undo the last linearized call and resume after it.
    fn backtrack(&mut self, stuck: usize) -> Next {
        if self.stack.len() > self.longest.len() || self.longest.is_empty() {
            self.longest = self.stack.iter().map(|&(c, _, _)| self.calls[c].op).collect();
            self.longest_state = self.state.clone();
            self.longest_stuck = self.calls[stuck].op;
        }
        let Some((c, prev, pos)) = self.stack.pop() else {
            return Next::Dead;
        };
        self.state = prev;
        self.unmark(c);
        Next::Continue(match pos {
            Pos::List(_) => {
                self.lists.list.relink(2 * c + 1);
                self.lists.list.relink(2 * c);
                Pos::List(self.lists.list.next[2 * c])
            }
            Pos::Pool { limit, stuck, .. } => {
                self.lists.pool.relink(c);
                Pos::Pool {
                    node: self.lists.pool.next[c],
                    limit,
                    stuck,
                }
            }
        })
    }

    fn step(&mut self, pos: Pos) -> Next {
        match pos {
            Pos::List(node) if node == self.lists.list.tail => Next::Done,
            Pos::List(node) if node.is_multiple_of(2) => {
                self.try_call(node / 2, pos, Pos::List(self.lists.list.next[node]))
            }
            Pos::List(node) => {
                let stuck = node / 2;
                let limit = self.calls[stuck].ret.unwrap_or(usize::MAX);
                Next::Continue(Pos::Pool {
                    node: self.lists.pool.first(),
                    limit,
                    stuck,
                })
            }
            Pos::Pool { node, limit, stuck } => {
                if node == self.lists.pool.tail || self.calls[node].call > limit {
                    return self.backtrack(stuck);
                }
                let skip = Pos::Pool {
                    node: self.lists.pool.next[node],
                    limit,
                    stuck,
                };
                self.try_call(node, pos, skip)
            }
        }
    }
}

/// Runs the search over one key's calls.
pub(crate) fn search<M: Model>(model: &M, calls: &[Call<M>], limits: Limits) -> Search<M::State> {
    let mut s = Searcher::new(model, calls);
    let mut pos = Pos::List(s.lists.list.first());
    // Per entry: the bitset's words, header and allocation, the state, the
    // counts and their allocation, the table slot.
    let words = calls.len().div_ceil(64);
    let entry = 8 * words + 4 * s.counts.len() + 96 + 2 * std::mem::size_of::<M::State>();
    let max_states = limits.max_states.min(limits.max_memo_bytes / entry);
    for steps in 0..limits.max_steps {
        if steps % 4096 == 4095 && limits.deadline.is_some_and(|d| Instant::now() >= d) {
            return Search::Exhausted {
                steps,
                why: Exhaustion::Time,
            };
        }
        if s.memo.entries >= max_states {
            return Search::Exhausted {
                steps,
                why: Exhaustion::States,
            };
        }
        match s.step(pos) {
            Next::Continue(p) => pos = p,
            Next::Done => return Search::Linearizable { steps: steps + 1 },
            Next::Dead => {
                let (longest, state, stuck) = (s.longest, s.longest_state, s.longest_stuck);
                return Search::Violation {
                    steps: steps + 1,
                    longest,
                    state,
                    stuck,
                };
            }
        }
    }
    Search::Exhausted {
        steps: limits.max_steps,
        why: Exhaustion::Steps,
    }
}

#[cfg(test)]
mod tests {
    //! Differential test: the WGL search against brute-force enumeration of
    //! every real-time-respecting order, on small random histories.

    use super::*;
    use crate::checker::models::{Register, RegisterInput as I, RegisterOutput as O};
    use crate::sim::Rng;

    /// A written value: "d" and "e" are never read nor expected by a CAS.
    fn written(rng: &mut Rng) -> String {
        ["a", "b", "c", "d", "e"][rng.below(5) as usize].to_string()
    }

    fn value(rng: &mut Rng) -> String {
        ["a", "b", "c"][rng.below(3) as usize].to_string()
    }

    fn random_op(rng: &mut Rng, optional: bool) -> (I, O) {
        let input = match rng.below(5) {
            0 => I::Read,
            1 => I::Write(written(rng)),
            2 => I::Cas {
                from: value(rng),
                to: written(rng),
            },
            3 => I::Create(written(rng)),
            _ => I::Delete,
        };
        let output = match (&input, optional) {
            (I::Read, _) => O::Read(rng.chance(75).then(|| value(rng))),
            (_, true) => O::Unknown,
            (I::Cas { .. } | I::Create(_), _) if rng.chance(40) => O::Rejected,
            _ => O::Done,
        };
        (input, output)
    }

    fn random_history(rng: &mut Rng) -> Vec<Call<Register>> {
        let n = 1 + rng.below(8) as usize;
        // Each op contributes a call and a return; shuffle and then order each pair.
        let mut slots: Vec<usize> = (0..2 * n).map(|i| i / 2).collect();
        for i in (1..slots.len()).rev() {
            slots.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut times: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (t, &op) in slots.iter().enumerate() {
            times[op].push(t);
        }
        (0..n)
            .map(|i| {
                let optional = rng.chance(30);
                let (input, output) = random_op(rng, optional);
                let ret = (!optional).then_some(times[i][1]);
                Call {
                    op: i,
                    input,
                    output,
                    call: times[i][0],
                    ret,
                }
            })
            .filter(|c| !(c.ret.is_none() && c.input == I::Read))
            .collect()
    }

    /// The calls after [`Register::prepare`].
    fn prepared(mut calls: Vec<Call<Register>>) -> Vec<Call<Register>> {
        let mut pairs: Vec<_> = calls.iter().map(|c| (c.input.clone(), c.output.clone())).collect();
        Register.prepare(&mut pairs);
        for (c, (input, output)) in calls.iter_mut().zip(pairs) {
            (c.input, c.output) = (input, output);
        }
        calls
    }

    fn brute(calls: &[Call<Register>], done: &mut Vec<bool>, state: &Option<String>) -> bool {
        let pending = |done: &[bool], j: usize| !done[j] && calls[j].ret.is_some();
        if !(0..calls.len()).any(|j| pending(done, j)) {
            return true;
        }
        for i in 0..calls.len() {
            let blocked = (0..calls.len()).any(|j| j != i && pending(done, j) && calls[j].ret < Some(calls[i].call));
            if done[i] || blocked {
                continue;
            }
            if let Some(next) = Register.step(state, &calls[i].input, &calls[i].output) {
                done[i] = true;
                let ok = brute(calls, done, &next);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn wgl_agrees_with_brute_force() {
        let mut rng = Rng::new(42);
        let limits = Limits {
            max_steps: 1_000_000,
            max_states: usize::MAX,
            max_memo_bytes: usize::MAX,
            deadline: None,
        };
        let (mut yes, mut no) = (0, 0);
        for case in 0..20_000 {
            let calls = random_history(&mut rng);
            let expected = brute(&calls, &mut vec![false; calls.len()], &None);
            let got = search(&Register, &prepared(calls.clone()), limits);
            match got {
                Search::Linearizable { .. } => yes += 1,
                Search::Violation { .. } => no += 1,
                Search::Exhausted { .. } => panic!("case {case}: budget"),
            }
            assert_eq!(
                matches!(got, Search::Linearizable { .. }),
                expected,
                "case {case}: {calls:?}"
            );
        }
        assert!(yes > 1000 && no > 1000, "{yes} linearizable, {no} not");
    }
}
