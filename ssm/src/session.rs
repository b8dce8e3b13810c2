//! A streaming session: one state moving through input of any length in bounded pieces.

use std::sync::Arc;

use crate::model::{Pass, Workspace};
use crate::{Error, LogitRows, Model, Plan, Sampler, State};

/// Tokens per forward pass in prefill. Activation memory is proportional to it (about 50 KB per
/// token at mamba2-130m's width), not to the input length.
pub const DEFAULT_PIECE_LEN: usize = 1024;

/// One stream through a shared model: prefill, step, generate, fork.
pub struct Session {
    model: Arc<Model>,
    plan: Arc<Plan>,
    state: State,
    piece_len: usize,
    workspace: Workspace,
    step_workspace: Workspace,
    has_logits: bool,
}

impl Session {
    /// A session of the plain model from the empty state.
    pub fn new(model: Arc<Model>) -> Session {
        let plan = Arc::new(model.plain_plan().clone());
        Session::with_plan(model, plan)
    }

    /// A session with mitigations from the empty state.
    pub fn with_plan(model: Arc<Model>, plan: Arc<Plan>) -> Session {
        let state = model.new_state_for(&plan);
        Session::from_parts(model, plan, state)
    }

    /// A session of the plain model that continues from `state` (saved earlier, or forked).
    pub fn with_state(model: Arc<Model>, state: State) -> Result<Session, Error> {
        let plan = Arc::new(model.plain_plan().clone());
        Session::with_state_and_plan(model, state, plan)
    }

    /// A session with mitigations that continues from `state`.
    pub fn with_state_and_plan(model: Arc<Model>, mut state: State, plan: Arc<Plan>) -> Result<Session, Error> {
        model.prepare_state(&plan, &mut state)?;
        Ok(Session::from_parts(model, plan, state))
    }

    fn from_parts(model: Arc<Model>, plan: Arc<Plan>, state: State) -> Session {
        Session {
            workspace: model.workspace(0),
            step_workspace: model.workspace(1),
            model,
            plan,
            state,
            piece_len: DEFAULT_PIECE_LEN,
            has_logits: false,
        }
    }

    /// Sets the tokens per forward pass of prefill (bounded memory; larger is faster up to a
    /// point). Results do not depend on it beyond f32 rounding.
    pub fn set_piece_len(&mut self, piece_len: usize) {
        self.piece_len = piece_len.max(1);
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The state after the tokens consumed so far: clone it for a snapshot to [`Session::restore`], or [`State::save`] it.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state, to read diagnostics from or switch them on ([`State::record_stats`]).
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// The mitigations this session applies (the plain model's plan when it has none).
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Ends the session, keeping its state (to save, or to continue in another session).
    pub fn into_state(self) -> State {
        self.state
    }

    /// Tokens consumed since the stream began.
    pub fn position(&self) -> u64 {
        self.state.position()
    }

    /// A new session from a copy of this one's state; the two then go their own ways.
    pub fn fork(&self) -> Session {
        let mut fork = Session::from_parts(self.model.clone(), self.plan.clone(), self.state.clone());
        if self.has_logits {
            fork.step_workspace.logits.clone_from(self.logits_buffer());
            fork.has_logits = true;
        }
        fork
    }

    /// Returns to a snapshot of the state (from [`Session::state`], cloned earlier).
    pub fn restore(&mut self, snapshot: &State) -> Result<(), Error> {
        self.state.restore(snapshot)?;
        self.has_logits = false;
        Ok(())
    }

    /// Logits after the last token consumed, `[V]`, if the session has seen any.
    pub fn logits(&self) -> Option<&[f32]> {
        self.has_logits.then(|| self.logits_buffer().as_slice())
    }

    fn logits_buffer(&self) -> &Vec<f32> {
        if self.step_workspace.logits.is_empty() { &self.workspace.logits } else { &self.step_workspace.logits }
    }

    /// Consumes `tokens` (any number) from the current state; returns the last position's logits.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        self.prefill_with_progress(tokens, |_| {})
    }

    /// [`Session::prefill`], calling `progress(tokens_done)` after each piece.
    pub fn prefill_with_progress(&mut self, tokens: &[u32], mut progress: impl FnMut(usize)) -> Result<&[f32], Error> {
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        self.has_logits = false;
        let pieces = tokens.chunks(self.piece_len);
        let count = pieces.len();
        let mut done = 0;
        for (i, piece) in pieces.enumerate() {
            let rows = if i + 1 == count { LogitRows::Last } else { LogitRows::None };
            self.model.forward_in(Pass::Prefill, &self.plan, &mut self.state, piece, rows, &mut self.workspace)?;
            done += piece.len();
            progress(done);
        }
        self.step_workspace.logits.clear();
        self.has_logits = true;
        Ok(&self.workspace.logits)
    }

    /// Feeds `tokens[i]` to `sessions[i]` for every i, all the same length, together: each
    /// projection reads its weights once per piece for the whole batch (see
    /// [`Model::prefill_batch`]). The sessions must share one model and one plan. Pieces hold
    /// about the first session's piece length of tokens in all, so memory stays bounded however
    /// long the input. Afterwards each session holds its own last-position logits.
    pub fn prefill_batch(sessions: &mut [&mut Session], tokens: &[impl AsRef<[u32]> + Sync]) -> Result<(), Error> {
        if sessions.len() != tokens.len() {
            return Err(Error::BatchMismatch { states: sessions.len(), tokens: tokens.len() });
        }
        let Some(first) = sessions.first() else { return Err(Error::EmptyInput) };
        let (model, plan) = (first.model.clone(), first.plan.clone());
        let same_plan = |other: &Arc<Plan>| Arc::ptr_eq(other, &plan) || **other == *plan;
        if let Some(index) = sessions.iter().position(|s| !Arc::ptr_eq(&s.model, &model) || !same_plan(&s.plan)) {
            return Err(Error::BatchMixed { index });
        }
        let len = tokens[0].as_ref().len();
        if let Some(index) = tokens.iter().position(|t| t.as_ref().len() != len) {
            return Err(Error::BatchLengths { first: len, index, len: tokens[index].as_ref().len() });
        }
        if len == 0 {
            return Err(Error::EmptyInput);
        }
        let piece = (first.piece_len / sessions.len()).max(1);
        for session in sessions.iter_mut() {
            session.has_logits = false;
        }
        let mut logits = Vec::new();
        for start in (0..len).step_by(piece) {
            let end = (start + piece).min(len);
            let pieces: Vec<&[u32]> = tokens.iter().map(|t| &t.as_ref()[start..end]).collect();
            let mut states: Vec<&mut State> = sessions.iter_mut().map(|s| &mut s.state).collect();
            model.prefill_batch_into(&plan, &mut states, &pieces, &mut logits)?;
        }
        for (session, row) in sessions.iter_mut().zip(logits.chunks_exact(model.vocab_size())) {
            session.workspace.logits.clear();
            session.workspace.logits.extend_from_slice(row);
            session.step_workspace.logits.clear();
            session.has_logits = true;
        }
        Ok(())
    }

    /// Consumes `tokens` and hands every position's logits to `on_row(position, logits)`,
    /// one piece at a time, so memory stays bounded however long the input.
    pub fn score(&mut self, tokens: &[u32], mut on_row: impl FnMut(u64, &[f32])) -> Result<(), Error> {
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        let vocab = self.model.vocab_size();
        for piece in tokens.chunks(self.piece_len) {
            let start = self.state.position();
            self.model.forward_in(Pass::Prefill, &self.plan, &mut self.state, piece, LogitRows::All, &mut self.workspace)?;
            for (i, row) in self.workspace.logits.chunks_exact(vocab).enumerate() {
                on_row(start + i as u64, row);
            }
        }
        // Keep only the last row as "the" logits.
        let last = self.workspace.logits.len() - vocab;
        self.workspace.logits.drain(..last);
        self.step_workspace.logits.clear();
        self.has_logits = true;
        Ok(())
    }

    /// Consumes one token through the recurrent step; returns its logits `[V]`.
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.has_logits = false;
        self.model.forward_in(Pass::Decode, &self.plan, &mut self.state, &[token], LogitRows::Last, &mut self.step_workspace)?;
        self.has_logits = true;
        Ok(&self.step_workspace.logits)
    }

    /// Samples up to `max_new_tokens` tokens, feeding each back in, and hands each to `on_token`,
    /// which returns `false` to stop early. Starts from the current logits (so prefill first).
    /// Returns the tokens generated.
    pub fn generate(
        &mut self,
        sampler: &mut Sampler,
        max_new_tokens: usize,
        vocab_limit: usize,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, Error> {
        let mut generated = Vec::new();
        for _ in 0..max_new_tokens {
            let Some(logits) = self.logits() else { return Err(Error::EmptyInput) };
            let token = sampler.sample(logits, vocab_limit);
            generated.push(token);
            let go_on = on_token(token);
            self.step(token)?;
            if !go_on {
                break;
            }
        }
        Ok(generated)
    }
}
