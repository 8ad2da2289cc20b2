import type { Access } from './guard.js'

/** The commands of the operator routes: supervisord's (start, stop), the pin's (release) and the registry's (drain, maint, ready, weight). */
export const OPERATOR_COMMANDS = ['start', 'stop', 'release', 'drain', 'maint', 'ready', 'weight'] as const
export type OperatorCommand = typeof OPERATOR_COMMANDS[number]

/** Where an upstream's operator routes answer and who may use them: what the status page needs to post its forms there. */
export interface OperatorRoutes {
  upstream: string
  /** The URL of each command's route, `:backend` left off (`/_supervisord/drain`). */
  paths: Partial<Record<OperatorCommand, string>>
  /** The method a form posts with: POST when the routes take it, else GET. */
  method: 'POST' | 'GET'
  /** The routes' guard. */
  access: Access
}
