// Rolldown options for `jco componentize --bundle`: the agent's WIT interfaces are the
// component's imports, not files to bundle.
export default { external: [/^edge:agent\//] };
