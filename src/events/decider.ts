/**
 * The shape of every stream kind's domain logic (after emmett's `Decider`): pure functions, no I/O,
 * no clock reads. Time and random draws arrive inside commands, so replaying a log always gives the
 * same state. `decide` throws a `WarrenError` to refuse a command and returns [] when there is
 * nothing to do.
 */
export interface Decider<C, E, S> {
  decide(command: C, state: S): E[];
  evolve(state: S, event: E): S;
  initialState(): S;
}
