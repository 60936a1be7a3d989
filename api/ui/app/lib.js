// One place that names the vendored modules, so pages import from "../lib.js".
export {
  h, html, render, Component, createContext, useState, useReducer, useEffect, useLayoutEffect,
  useRef, useMemo, useCallback, useContext,
} from "../vendor/preact-htm.module.js";
export { default as uPlot } from "../vendor/uPlot.module.min.js";
